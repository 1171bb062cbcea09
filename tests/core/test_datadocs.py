"""The offline Data Docs page: every expectation with its result, no scripts, no external URLs."""
import json
import re

from conftest import REPO

from mrisynth.core import datadocs

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _suites(failing: set[int]) -> list[dict]:
    """The shipped suite's expectations (expectations/brats_slices.json), those at `failing` failed."""
    suite = json.loads((REPO / "expectations" / "brats_slices.json").read_text())
    rows = []
    for k, entry in enumerate(suite["expectations"]):
        kwargs = entry["kwargs"]
        rows.append({"type": entry["type"], "target": kwargs.get("column", "table"), "notes": entry.get("meta", {}).get("notes", ""),
                     "expected": str({key: v for key, v in kwargs.items() if key != "column"}), "success": k not in failing,
                     "observed": f"observed-{k}", "details": f"case_{k} <bad> value" if k in failing else ""})
    stats = {"evaluated_expectations": len(rows), "successful_expectations": len(rows) - len(failing)}
    return [{"name": suite.get("name", "brats_slices"), "success": not failing, "statistics": stats, "expectations": rows}]


def _row(page: str, k: int) -> str:
    """The table row of the k-th expectation (1-based)."""
    return re.search(rf"<tr class=\"(?:pass|fail)\"><td>{k}</td>.*?</tr>", page, re.S).group(0)


def test_page_lists_every_expectation_with_its_result_and_needs_no_network():
    suites = _suites(failing={2, 5})
    page = datadocs.html(suites, "Data validation", source="data")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not EXTERNAL.search(page) and "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "url(" not in page and "@import" not in page
    assert "FAILED" in page.split("</h1>")[0]  # the verdict at the top
    for k, row in enumerate(suites[0]["expectations"]):
        html_row = _row(page, k + 1)
        assert row["type"] in html_row and row["target"] in html_row and f"observed-{k}" in html_row
        assert ("FAILED" in html_row) == (k in {2, 5}) and ("passed" in html_row) == (k not in {2, 5})
    assert "case_2 &lt;bad&gt; value" in page and "<bad>" not in page  # values are escaped
    assert f"{len(suites[0]['expectations']) - 2} / {len(suites[0]['expectations'])}" in page


def test_passing_page_and_markdown_twin():
    suites = _suites(failing=set())
    page = datadocs.html(suites)
    assert "PASSED" in page.split("</h1>")[0] and "FAILED" not in page
    text = datadocs.markdown(suites, source="data")
    assert text.startswith("# Data validation: PASSED") and "`data`" in text
    for k, row in enumerate(suites[0]["expectations"]):
        line = next(line for line in text.splitlines() if line.startswith(f"| {k + 1} | "))
        assert f"`{row['type']}`" in line and "passed" in line and f"observed-{k}" in line
    failing = datadocs.markdown(_suites(failing={0}))
    assert failing.startswith("# Data validation: FAILED") and "**FAILED**" in failing and "case_0 &lt;bad&gt; value" in failing
