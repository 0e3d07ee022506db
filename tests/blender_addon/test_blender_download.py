"""The model download in Blender: the add-on starts an engine whose model is a repo id the cache
lacks; huggingface_hub's real download code fetches it from a local mirror of the hub's
endpoints (tests/engine/hub_mirror.py); the connection box shows a progress bar with bytes,
speed and the file, ending at 100 %; offline, the start fails with the one-line error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from blender_harness import ROOT, check, free_port, have_bpy, run_scenarios

sys.path.insert(0, str(ROOT / "tests" / "engine"))
from hub_mirror import HubMirror  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow,
              pytest.mark.skipif(not have_bpy(), reason="needs bpy (pip install bpy==5.0.1)")]
REPO = "test/zimage-tiny"


def test_the_panel_shows_the_engines_model_download(addon_zip, tiny_engine_model_dir,
                                                    tmp_path):
    with HubMirror(Path(tiny_engine_model_dir), REPO, bytes_per_s=0.6e6) as mirror:
        results = run_scenarios(addon_zip["path"], ["install", "download_visible"], tmp_path,
                                timeout=400, script="blender_scenarios_install.py",
                                local_port=free_port(), repo=ROOT, hub=mirror.url,
                                hf_home=tmp_path / "hf", repo_id=REPO)
    check(results, "install")
    r = check(results, "download_visible")
    assert r["state"] == "ready", r["engine_log"]
    bars = r["bars"]
    assert len({f for f, _ in bars}) > 3, bars
    fractions = [f for f, _ in bars]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert bars[0][1].startswith("Downloading model: ")
    assert bars[-1][1].startswith("Downloading model: 100 % (4.7 MB of 4.7 MB)")
    assert any("/s, file " in t for _, t in bars)
    assert r["last_report"]["done"] == r["last_report"]["total"] == mirror.total_bytes
    assert not r["bar_after_ready"]
    assert r["offline_failed"], r["offline_lines"]
    err = r["offline_error"]
    assert "\n" not in err and REPO in err and "--model PATH" in err
    assert any("Or set Model below" in line for line in r["offline_lines"])
    hf_home = str(tmp_path / "hf")
    assert r["model_folder"].rstrip("/\\") == hf_home
    assert r["model_file"] == str(tmp_path / "hf" / "z.safetensors")
    assert "zimage.choose_model" in r["model_buttons"]
    assert results["_process"]["rc"] == 0, results["_process"]["stderr"]
