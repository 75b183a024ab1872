"""benchmarks/README.md is generated from the committed results: the generator must read every one of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_summary_renders_every_committed_result_and_matches_the_committed_page(tmp_path):
    out = tmp_path / "README.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "summarize.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    # every result family has its row (the engines file once broke the federated loop)
    for source in ("federated_engines.md", "fidelity_surrogates.md", "select_m.md", "affinity_planted_full_rank.md"):
        assert f"`{source}`" in text, source
    # every ensemble benchmark's ensemble − single adapter difference comes with its interval over seeds
    for f in sorted((ROOT / "benchmarks" / "results").glob("ensemble_accuracy_*.json")):
        result = json.loads(f.read_text())
        pair = next((p for p in result["aggregate"].get("paired", []) if (p["a"], p["b"]) == ("ensemble", "single_adapter")), None)
        if pair is not None and isinstance(pair["ci95"], list):
            name = result["name"]
            lo, hi = (f"{100 * x:+.1f}" for x in pair["ci95"])
            kind = "QLoRA" if name.endswith("_qlora") else "LoRA"  # the config's adapter type names the row
            assert f"| ensemble vs single {kind} adapter, paired by seed ({name}) | – | " in text, name
            assert f"95% interval [{lo}, {hi}], ahead in {pair['a_ahead']}/{pair['seeds']} seeds | `{f.stem}.md` |" in text, name
    assert text == (ROOT / "benchmarks" / "README.md").read_text(), \
        "benchmarks/README.md is stale: run `python benchmarks/summarize.py`"
