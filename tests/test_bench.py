"""The benchmark script (bench/run.py): marked sections of BENCHMARKS.md and small real runs."""

import json
import re

from bench import acceptance, run as bench


def test_merge_section_appends_then_replaces_only_its_own_section(tmp_path):
    md = tmp_path / "B.md"
    bench.merge_section(md, "quality/a", "first A")
    bench.merge_section(md, "speed/b", "only B")
    bench.merge_section(md, "quality/a", "second A")
    text = md.read_text()
    assert text.startswith("# Benchmarks")
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.count("<!-- bench:quality/a -->") == 1 and text.count("<!-- /bench:quality/a -->") == 1
    assert text.index("second A") < text.index("only B")  # replaced in place, not moved to the end


def test_quality_and_speed_sections_from_real_runs(tmp_path, capsys):
    md, results = tmp_path / "B.md", tmp_path / "results"
    common = ["--preset", "test-vit-mnist", "--train-limit", "300", "--output", str(md), "--results-dir",
              str(results), "--quiet", "--device", "cpu"]
    assert bench.main(["quality", *common, "--methods", "mape,so", "--seeds", "0", "--forget-sets", "class:3",
                       "--relearn", "1"]) == 0
    text = md.read_text()
    assert "## Quality · test-vit-mnist, train limit 300 · forget `class:3`" in text
    assert "Command: `python bench/run.py quality --preset test-vit-mnist" in text
    for row in ("| original (no unlearning) |", "| mape |", "| so |", "| retrain (reference) |"):
        assert row in text
    res = json.loads((results / "quality-test-vit-mnist-n300-class_3.json").read_text())
    assert res["methods"] == ["mape", "so"] and res["seeds"] == [0]
    assert res["results"]["retrain"]["gap_to_retrain"]["mean"] == 0.0
    _check_acceptance_of(results / "quality-test-vit-mnist-n300-class_3.json", res, capsys)

    assert bench.main(["speed", *common, "--methods", "mape", "--forget", "random:16"]) == 0
    text = md.read_text()
    assert "| mape |" in text and "## Speed · test-vit-mnist" in text and "Quality · test-vit-mnist" in text
    speed = json.loads((results / "speed-test-vit-mnist-n300-cpu.json").read_text())
    row = speed["methods"][0]
    assert row["total_s"] > 0 and speed["retrain"]["total_s"] > 0
    assert row["speedup_vs_retrain"] == speed["retrain"]["total_s"] / row["total_s"]
    assert re.search(r"\| mape \| [\d.]+ \| [\d.]+ \| [\d.]+ \| .* \| [\d,.]+× \|", text)


def _check_acceptance_of(path, res, capsys):
    """bench/acceptance.py on a real saved comparison: its figures are the JSON's, its verdict follows them."""
    capsys.readouterr()
    assert acceptance.main([str(path)]) == 0
    out = capsys.readouterr().out
    gap = {name: 100 * res["results"][name]["gap_to_retrain"]["mean"] for name in ("original", "mape", "so")}
    rank = 1 + (gap["so"] < gap["mape"])
    forget = 100 * res["results"]["mape"]["forget_acc"]["values"][0]
    assert (f"| test-vit-mnist `class:3` | 0 | {gap['mape']:.2f} | {gap['original']:.2f} | {rank} of 2 | "
            f"so ({gap['so']:.2f}) |") in out
    assert out.rstrip().endswith(f"every seed: {int(forget <= 1.0)} of 1 tables")
    assert f"smallest gap of its table: {int(rank == 1)} of 1 tables" in out
    assert acceptance.main([str(path) + "+" + str(path)]) == 2  # one seed twice: refused with one line
    assert "more than one run" in capsys.readouterr().err


def test_merge_writes_one_section_over_the_seeds_of_separate_runs(tmp_path, capsys):
    md, results = tmp_path / "B.md", tmp_path / "results"
    common = ["--preset", "test-vit-mnist", "--train-limit", "300", "--results-dir", str(results), "--quiet",
              "--device", "cpu", "--methods", "mape", "--forget-sets", "random:16", "--relearn", "0"]
    paths = []
    for seed in ("0", "1"):
        assert bench.main(["quality", *common, "--seeds", seed, "--output", str(tmp_path / f"B{seed}.md")]) == 0
        single = results / "quality-test-vit-mnist-n300-random_16.json"
        paths.append(single.rename(results / f"seed{seed}.json"))
    argv = ["merge", *map(str, paths), "--train-limit", "300", "--output", str(md), "--results-dir", str(results)]
    assert bench.main(argv) == 0
    text = md.read_text()
    assert text.count("## Quality · test-vit-mnist, train limit 300 · forget `random:16`") == 1
    assert "Merged from 2 run(s)" in text and "seeds 0,1" in text and "over 2 seed(s)" in text
    assert re.search(r"Python [\d.]+; merged \d{4}-\d\d-\d\d \d\d:\d\d\. Wall time \d+ s", text)
    merged = json.loads((results / "quality-test-vit-mnist-n300-random_16-seeds0-1.json").read_text())
    assert merged["seeds"] == [0, 1] and merged["results"]["mape"]["n"] == 2
    singles = [json.loads(p.read_text())["results"]["mape"]["forget_acc"]["mean"] for p in paths]
    assert merged["results"]["mape"]["forget_acc"]["values"] == singles
    # the same run twice is refused with one line, and the section stays as it was
    assert bench.main(["merge", str(paths[0]), str(paths[0]), "--output", str(md), "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "more than one run" in err and "\n" not in err
    assert md.read_text() == text


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert bench.main(["quality", "--preset", "no-such-preset", "--output", str(tmp_path / "B.md"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert bench.main(["speed", "--preset", "test-vit-mnist", "--repeats", "0", "--quiet"]) == 2
