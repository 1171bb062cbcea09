"""The lines `make run` ends with: the verdict from Table 1 and what to run next."""
from mrisynth.ops import next_steps


def test_verdict_lines_come_from_table1(tmp_path):
    table = tmp_path / "table1.md"
    table.write_text("# Table 1\n\n## Verdict (test split)\n\n- **GAN beyond classic: +0.05** (x)\n- **Classic vs none: -0.07**\n\nEach line ...\n")
    assert next_steps.verdict_lines(table) == ["- **GAN beyond classic: +0.05** (x)", "- **Classic vs none: -0.07**"]
    assert next_steps.verdict_lines(tmp_path / "missing.md") == []


def test_message_links_the_saved_arms_view_and_names_promote_and_serve():
    text = next_steps.message("mrisynth", "3", "mrisynth-generator")
    assert "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=arms" in text
    assert "reports/table1.md" in text and "mrisynth promote" in text
    assert "mrisynth serve --model models:/mrisynth-generator@champion" in text
    assert "experiment mrisynth" in next_steps.message("mrisynth", None, "g")  # no store yet: no broken link


def test_no_tracking_store_yet_gives_no_id_and_creates_no_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert next_steps.experiment_id("mrisynth") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert next_steps.experiment_id("mrisynth") is None
    assert list(tmp_path.iterdir()) == []  # "reads files and the tracking store only; writes nothing"
