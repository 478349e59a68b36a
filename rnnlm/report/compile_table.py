"""The report's compile section: kernels.compile_report's table of every GPU configuration of the kernels."""
from __future__ import annotations

from kernels import compile_report as cr  # imports no triton itself

from rnnlm.errors import UsageError
from rnnlm.report.benchmarks import read_json


def compile_section(compile_json: str | None) -> tuple[str, list[str]]:
    """(markdown, problems): the compile report read from compile_json, else built now (cached)."""
    try:
        if compile_json:
            report = read_json(compile_json)
            if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
                raise UsageError(f"{compile_json}: not a compile_report.json (no 'rows' list)")
        else:
            report = cr.compile_report(cr.ARCHS, cr.KERNEL_MODULES)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"The compile report could not be produced: {first}", [f"compile report failed: {first}"]
    rows = report["rows"]
    bad = [r for r in rows if not r.get("ok")]
    archs = ", ".join(f"sm_{a}" for a in report.get("archs", []))
    text = (f"Every configuration the launchers can choose on a GPU, compiled for {archs} by triton "
            f"{report.get('triton', '?')} (`python -m kernels.compile_report`; generated {report.get('generated')}). "
            f"Registers, stack and local memory from `cuobjdump --dump-resource-usage`, spill stores from "
            f"`ptxas -v`; shared = triton's dynamic + static shared memory (limit: the most one block can use). "
            f"{len(rows)} builds, {len(bad)} failing a check.\n\n" + cr.markdown_table(report))
    problems = [f"compile report: {len(bad)} configuration(s) fail a check"] if bad else []
    return text, problems

