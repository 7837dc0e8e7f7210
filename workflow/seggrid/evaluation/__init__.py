"""Stage 4, evaluation: DSC/NSD metrics per case, bootstrap CIs and tests."""
