"""Static, offline Data Docs (pure): validation results as one self-contained HTML page and as Markdown.

Great Expectations' own Data Docs build their index with JavaScript and styles from a CDN, so offline the
index lists no validations and the pages are unstyled. These pages need nothing but the file: inline CSS,
no scripts, no links, no external URLs.

Input: a list of suites, each a dict
    {"name": str, "success": bool, "statistics": {"evaluated_expectations": int, "successful_expectations": int, ...},
     "expectations": [{"type": str, "target": str, "notes": str, "expected": str, "success": bool,
                       "observed": str, "details": str}, ...]}
(built from GX results by mrisynth.io.gx)."""
from __future__ import annotations

from html import escape

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #1d2327; background: #fff; }
h1 { font-size: 22px; margin: 0 0 6px 0; }
h2 { font-size: 18px; margin: 28px 0 8px 0; }
p.meta { color: #50575e; margin: 2px 0; }
.badge { display: inline-block; padding: 3px 10px; border-radius: 4px; font-weight: bold; color: #fff; }
.badge.pass { background: #1e7e34; } .badge.fail { background: #b32d2e; }
table { border-collapse: collapse; width: 100%; margin-top: 6px; font-size: 13px; }
th, td { border: 1px solid #c3c4c7; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f1; }
tr.pass td.result { background: #d4edda; color: #155724; font-weight: bold; }
tr.fail td.result { background: #f8d7da; color: #721c24; font-weight: bold; }
tr.fail { background: #fff5f5; }
code { font-family: Menlo, Consolas, monospace; font-size: 12px; }
td.details, span.details, ul.failed { color: #721c24; }
"""


def _counts(suite: dict) -> tuple[int, int]:
    """(passed, evaluated) of a suite, from its statistics or, failing that, its expectations."""
    stats = suite.get("statistics") or {}
    rows = suite.get("expectations") or []
    evaluated = stats.get("evaluated_expectations", len(rows))
    passed = stats.get("successful_expectations", sum(bool(r.get("success")) for r in rows))
    return int(passed), int(evaluated)


def overall(suites: list[dict]) -> bool:
    return all(bool(s.get("success")) for s in suites)


def _verdict(success: bool) -> str:
    return "PASSED" if success else "FAILED"


def html(suites: list[dict], title: str = "Data validation", source: str | None = None) -> str:
    """One self-contained HTML page: a summary of every suite, then each suite's expectations with their
    result and observed value (failures first in colour, in suite order)."""
    ok = overall(suites)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           f"<h1>{escape(title)} <span class=\"badge {'pass' if ok else 'fail'}\">{_verdict(ok)}</span></h1>"]
    if source:
        out.append(f"<p class=\"meta\">Data: <code>{escape(source)}</code></p>")
    out.append("<p class=\"meta\">Great Expectations results, one row per expectation; this page works offline "
               "(no scripts, no external files).</p>")
    out += ["<h2>Suites</h2>", "<table>", "<tr><th>suite</th><th>result</th><th>passed / evaluated</th></tr>"]
    for suite in suites:
        passed, evaluated = _counts(suite)
        cls = "pass" if suite.get("success") else "fail"
        out.append(f"<tr class=\"{cls}\"><td><code>{escape(str(suite.get('name', '?')))}</code></td>"
                   f"<td class=\"result\">{_verdict(bool(suite.get('success')))}</td><td>{passed} / {evaluated}</td></tr>")
    out.append("</table>")
    failed = [(suite, k, row) for suite in suites for k, row in enumerate(suite.get("expectations") or [], 1) if not row.get("success")]
    if failed:
        out += ["<h2>Failed expectations</h2>", "<ul class=\"failed\">"]
        out += [f"<li><code>{escape(str(suite.get('name', '?')))}</code> #{k} <code>{escape(str(row.get('type', '')))}</code> on "
                f"<code>{escape(str(row.get('target', '')))}</code>: {escape(str(row.get('notes', '')))}; found "
                f"{escape(str(row.get('observed', '')))}{' (' + escape(str(row['details'])) + ')' if row.get('details') else ''}</li>"
                for suite, k, row in failed]
        out.append("</ul>")
    for suite in suites:
        passed, evaluated = _counts(suite)
        out.append(f"<h2>Suite <code>{escape(str(suite.get('name', '?')))}</code>: {_verdict(bool(suite.get('success')))} "
                   f"({passed} / {evaluated} passed)</h2>")
        out += ["<table>", "<tr><th>#</th><th>expectation</th><th>column</th><th>what it checks</th><th>expected</th>"
                "<th>result</th><th>observed</th></tr>"]
        for k, row in enumerate(suite.get("expectations") or [], 1):
            success = bool(row.get("success"))
            observed = escape(str(row.get("observed", "")))
            details = row.get("details")
            if details:
                observed += f"<br><span class=\"details\">{escape(str(details))}</span>"
            out.append(f"<tr class=\"{'pass' if success else 'fail'}\"><td>{k}</td><td><code>{escape(str(row.get('type', '')))}</code></td>"
                       f"<td><code>{escape(str(row.get('target', '')))}</code></td><td>{escape(str(row.get('notes', '')))}</td>"
                       f"<td><code>{escape(str(row.get('expected', '')))}</code></td>"
                       f"<td class=\"result\">{'passed' if success else 'FAILED'}</td><td>{observed}</td></tr>")
        out.append("</table>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _cell(value) -> str:
    """A Markdown table cell: pipes escaped, one line, no raw HTML."""
    return str(value).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def markdown(suites: list[dict], title: str = "Data validation", source: str | None = None) -> str:
    """The same content as html(...), as Markdown tables."""
    ok = overall(suites)
    out = [f"# {title}: {_verdict(ok)}", ""]
    if source:
        out += [f"Data: `{source}`", ""]
    out += ["| suite | result | passed / evaluated |", "|---|---|---|"]
    for suite in suites:
        passed, evaluated = _counts(suite)
        out.append(f"| `{_cell(suite.get('name', '?'))}` | {_verdict(bool(suite.get('success')))} | {passed} / {evaluated} |")
    for suite in suites:
        passed, evaluated = _counts(suite)
        out += ["", f"## Suite `{_cell(suite.get('name', '?'))}`: {_verdict(bool(suite.get('success')))} ({passed} / {evaluated} passed)", "",
                "| # | expectation | column | what it checks | expected | result | observed |", "|---|---|---|---|---|---|---|"]
        for k, row in enumerate(suite.get("expectations") or [], 1):
            observed = _cell(row.get("observed", "")) + (f" — {_cell(row['details'])}" if row.get("details") else "")
            out.append(f"| {k} | `{_cell(row.get('type', ''))}` | `{_cell(row.get('target', ''))}` | {_cell(row.get('notes', ''))} | "
                       f"`{_cell(row.get('expected', ''))}` | {'passed' if row.get('success') else '**FAILED**'} | {observed} |")
    return "\n".join(out) + "\n"
