"""A benchmark's figures: agentq's, the same-run baseline's, their ratio, the target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured figure. ``target`` is met when ``agentq`` (or the ratio) passes it."""

    name: str
    agentq: float
    unit: str
    baseline: float | None = None
    target: str = ""  # e.g. ">= 0.8x", "<= 100", "== 0"

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.agentq / self.baseline

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, _, limit = self.target.partition(" ")
        value = self.ratio if limit.endswith("x") else self.agentq
        if value is None:
            return None
        bound = float(limit.rstrip("x"))
        return {">=": value >= bound, "<=": value <= bound, "==": value == bound}[op]


def table(figures: list[Figure]) -> str:
    lines = [f"{'figure':52} {'agentq':>12} {'baseline':>12} {'ratio':>7}  target"]
    for figure in figures:
        baseline = f"{figure.baseline:,.1f}" if figure.baseline is not None else "-"
        ratio = f"{figure.ratio:.2f}" if figure.ratio is not None else "-"
        verdict = {True: "met", False: "NOT MET", None: ""}[figure.met]
        lines.append(f"{figure.name + ' (' + figure.unit + ')':52} {figure.agentq:>12,.1f} "
                     f"{baseline:>12} {ratio:>7}  {figure.target} {verdict}".rstrip())
    return "\n".join(lines)
