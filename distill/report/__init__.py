"""Run-folder outputs: results.json (one typed record), report.md, PNG plots (matplotlib's
Figure API: importing distill never changes matplotlib's global backend)."""

from distill.io import write_atomic, write_json
from distill.report.markdown import (
    console_table,
    layer_rows,
    markdown_report,
    markdown_table,
    plot_curves,
    plot_layer_fidelity,
    results_table,
    stage_rows,
)
from distill.report.results import RunResults, StudentResult, TeacherResult

__all__ = ["write_atomic", "write_json", "console_table", "layer_rows", "markdown_report", "markdown_table",
           "plot_curves", "plot_layer_fidelity", "results_table", "stage_rows", "RunResults", "StudentResult",
           "TeacherResult"]
