"""The verdicts' calibration on simulated tables with a known truth (benchmarks/statistics/statistics_calibration.py):
no difference -> "differs" in at most 5 % of 200 tables; a planted difference of 3 seed SDs
with 5 seeds a row -> "differs" in at least 80 %."""

from __future__ import annotations

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("statistics_calibration",
                                              ROOT / "benchmarks" / "statistics" / "statistics_calibration.py")
calibration = importlib.util.module_from_spec(spec)
spec.loader.exec_module(calibration)


def test_no_difference_is_called_in_at_most_5_percent_of_tables():
    # 3 seeds a row with a seed spread 4 x the noise: the case where a bootstrap alone over-calls
    rate = calibration.differs_rate(3, 0.0, 0.02, tables=200, resamples=499)
    assert rate["tables_differ"] <= 0.05, rate
    assert rate["tables_differ_with"]["bootstrap_p_alone"] > 0.1, rate      # why the Welch half is there


def test_a_planted_difference_of_3_seed_sds_is_found_in_at_least_80_percent():
    rate = calibration.differs_rate(5, 3.0, 0.01, tables=200, resamples=499)
    assert rate["tables_differ"] >= 0.80, rate
