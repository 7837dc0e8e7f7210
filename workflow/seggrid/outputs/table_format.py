"""A table's rows as Markdown and LaTeX, and its caption: what was tested, on how many cases
and seeds, and how (the columns are computed in outputs/report.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from seggrid.evaluation import stats


def _num(v, fmt: str) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def _score(r, m: str) -> str:
    text = f"{r[m]:.4f} [{_num(r[f'{m}_ci_low'], '.3f')}, {_num(r[f'{m}_ci_high'], '.3f')}]"
    sd = r[f"{m}_seed_sd"]
    return text + (f", SD {sd:.4f}" if np.isfinite(sd) else "")


def _first(r, m: str) -> bool:
    verdict = r[f"{m}_verdict"]
    return not isinstance(verdict, str) or not verdict       # the first row (a CSV reads "" back as NaN)


def _delta(r, m: str) -> str:
    if _first(r, m):
        return "(first row)"
    return f"{r[f'{m}_delta']:+.4f} [{_num(r[f'{m}_delta_ci_low'], '+.3f')}, {_num(r[f'{m}_delta_ci_high'], '+.3f')}]"


def _p_better(r, m: str) -> str:
    if _first(r, m):
        return ""
    return f"{_num(r[f'{m}_p_better'], '.2f')} [{_num(r[f'{m}_p_better_ci_low'], '.2f')}, " \
           f"{_num(r[f'{m}_p_better_ci_high'], '.2f')}]"


def _verdict(r, m: str) -> str:
    if _first(r, m):
        return ""
    verdict = r[f"{m}_verdict"]
    if verdict in (stats.DIFFERS, stats.NOT_SHOWN):
        return f"{verdict} (Holm p {r[f'{m}_p_holm']:.2g})"
    if verdict == stats.TOO_FEW_SEEDS:
        return f"{verdict} (case-level Wilcoxon p {_num(r[f'p_{m}'], '.2g') or 'n/a'})"
    return verdict


def _seeds_needed(r, m: str) -> str:
    if _first(r, m):
        return ""
    k, hours = r[f"{m}_seeds_needed"], r[f"{m}_seeds_needed_hours"]
    return f"{k} ({hours:.3g} h)" if isinstance(hours, float) and np.isfinite(hours) else str(k)


def _rank(r, m: str) -> str:
    if not np.isfinite(r[f"{m}_rank"]):
        return ""
    return f"{r[f'{m}_rank']:g} [{r[f'{m}_rank_low']:g}, {r[f'{m}_rank_high']:g}]"


def _patch(r) -> str:
    asked, used = r["patch_requested"], r["patch_effective"]
    return used if asked == used else f"{used} (asked {asked})"


def display_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the human-readable table."""
    paper, ranked = df["paper_dsc"].notna().any(), df["dsc_rank"].notna().any()
    head = ["Setting", "Patch", "Batch", "Loss", "Folds", "Seeds", "Cases"]
    for m in ("DSC", "NSD"):
        head += [f"{m} [95 % CI]", f"Δ {m} vs first [95 % CI]", f"P(> first) {m} [95 % CI]", f"Verdict {m}",
                 f"Seeds needed {m}"]
    head += (["Rank DSC [95 %]"] if ranked else []) + ["Dice global", "HD95 (mm)", "Training time (h)"]
    head += ["Paper DSC", "Paper NSD"] if paper else []
    body = []
    for _, r in df.iterrows():
        vals = [str(r["row"]), _patch(r), str(r["batch"]), r["loss"], r["folds"], str(r["n_seeds"]), str(r["n_cases"])]
        for m in ("dsc", "nsd"):
            vals += [_score(r, m), _delta(r, m), _p_better(r, m), _verdict(r, m), _seeds_needed(r, m)]
        vals += ([_rank(r, "dsc")] if ranked else []) + [_num(r["dice_global"], ".4f"), _num(r["hd95"], ".1f"),
                                                          _num(r["train_hours"], ".3g")]
        vals += [_num(r["paper_dsc"], ".4f"), _num(r["paper_nsd"], ".4f")] if paper else []
        body.append(vals)
    return head, body


def organs_note(organs: list[str]) -> str:
    """The caption's sentence naming the organs a table's means are over."""
    return f"DSC and NSD are means over {len(organs)} organs: {', '.join(organs)}."


def stats_note(df: pd.DataFrame, borrowed: dict[str, tuple[float, int]]) -> str:
    """The caption's account of the statistics: what was tested, on how many cases and seeds."""
    seeds = "/".join(str(k) for k in df["n_seeds"])
    tested = 2 * (len(df) - 1)
    text = (f"Tested: each row against the first row ({df['row'].iloc[0]}) on the same {df['n_cases'].iloc[0]} "
            f"evaluation cases, with {seeds} training seeds per row. Scores are means over the row's seeds with a "
            f"95 % CI from a two-level bootstrap ({stats.N_BOOTSTRAP} resamples: evaluation cases drawn with "
            "replacement and paired across rows, training seeds drawn with replacement within each row). "
            "Δ vs first and P(> first), the probability that a training of the row scores higher than a training "
            "of the first row (ties 1/2), come with CIs from the same bootstrap. Verdict: 'differs' when the "
            "larger of the bootstrap's p and a Welch t-test's p over the per-seed scores is below "
            f"{stats.ALPHA:g} after Holm's correction over the table's {tested} comparisons (rows x DSC and NSD); "
            f"'too few seeds' when either row has fewer than {stats.MIN_SEEDS} seeds (the case-level Wilcoxon "
            "p shown then ignores training noise). Seeds needed: seeds per row for 80 % power at the observed Δ "
            f"(two-sided, {stats.ALPHA:g}), and the training hours of that many trainings of the row; "
            "each row's own seed SD where it has 2 or more seeds")
    sd = {m: v for m, v in borrowed.items() if np.isfinite(v[0])}
    if sd:
        text += ", else the SD pooled over the grid's multi-seed rows (" + ", ".join(
            f"{m.upper()} {v:.4f}" for m, (v, _) in sd.items()) + f"; df {next(iter(sd.values()))[1]})"
    else:
        text += " (n/a where a row has 1 seed: no row of the grid has several)"
    text += "."
    if df["dsc_rank"].notna().any():
        text += " Rank: median and 95 % interval of the row's DSC rank (1 = best) over the bootstrap"
        text += (" (a row with one seed carries no seed noise into it: its interval is too narrow)."
                 if (df["n_seeds"] < 2).any() else ".")
    return text + " Training time: one training of the row, mean over seeds."


def to_markdown(df: pd.DataFrame, title: str, note: str = "") -> str:
    head, body = display_rows(df)
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(v) + " |" for v in body]
    return "\n".join(lines) + "\n\n" + note + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("Δ", r"$\Delta$"), (">", r"$>$")):
        text = text.replace(a, b)
    return text


def to_latex(df: pd.DataFrame, title: str, note: str = "") -> str:
    head, body = display_rows(df)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(' '.join(filter(None, (title, note))))}}}",
             r"\begin{tabular}{" + "l" * len(head) + "}", r"\hline", " & ".join(map(_tex, head)) + r" \\", r"\hline"]
    lines += [" & ".join(map(_tex, v)) + r" \\" for v in body]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
