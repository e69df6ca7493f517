"""Tests of the ``mptheory`` CLI (verify/figures, exit codes, JSON schema) and of the theory figures."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from mptheory import claims, cli, figures
from mptheory.errors import EXIT_BAD_INPUT, EXIT_REFUSED
from mptheory.verdict import CheckResult

CLAIM_FIELDS = {"id": str, "statement": str, "kind": str, "cases": int, "violations": int,
                "verdict": str}


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_help_lists_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "verify" in out and "figures" in out and "exit codes" in out
    for cmd in ("verify", "figures"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps the epilog
        assert e.value.code == 0 and "--quick" in out and "2 bad input" in out and "3 refused" in out


def test_verify_json_schema_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.json"
    rc = cli.main(["verify", "--quick", "--only", "D3", "G11,G15", "--json", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "G11" in text and "CAUGHT" in text  # table and the G11 negative control
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    doc = json.loads(text)
    assert [c["id"] for c in doc["claims"]] == ["D3", "G11", "G15"]
    for c in doc["claims"]:
        for key, typ in CLAIM_FIELDS.items():
            assert isinstance(c[key], typ), key
        assert c["kind"] in ("deterministic", "probabilistic")
        assert c["verdict"] in ("pass", "fail")
        assert c["worst_slack"] is None or isinstance(c["worst_slack"], float)
        assert c["cases"] >= 250 and c["violations"] == 0
    assert [n["status"] for n in doc["negative_controls"]] == ["caught"]
    assert doc["passed"] is True


def test_verify_exits_nonzero_when_a_claim_fails(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def wrong(quick: bool, seed: int) -> CheckResult:
        return CheckResult(cases=10, violations=3, worst_slack=-0.5, passed=False)

    monkeypatch.setitem(claims.REGISTRY, "D3", claims.Claim("D3", "forced failure", "deterministic",
                                                          "digest §2.1", wrong))
    assert cli.main(["verify", "--quick", "--only", "D3", "--no-progress", "--no-controls"]) == EXIT_REFUSED
    assert "FAIL" in capsys.readouterr().out


def test_verify_exits_nonzero_when_a_control_is_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    harmless = claims.NegativeControl("fake", "D3", "a 'wrong' bound that is actually right",
                                      lambda q, s: CheckResult(5, 0, 1.0, True))
    monkeypatch.setattr(claims.registry, "NEGATIVE_CONTROLS", [harmless])
    assert cli.main(["verify", "--quick", "--only", "D3", "--no-progress"]) == EXIT_REFUSED


def test_verify_rejects_unknown_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "--only", "Z9", "--no-progress"]) == EXIT_BAD_INPUT
    assert "unknown claim id" in capsys.readouterr().err


def test_verify_json_in_a_missing_folder_is_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "v.json"
    assert cli.main(["verify", "--quick", "--only", "D3", "--json", str(target), "--no-progress"]) == 2
    assert not target.parent.exists()


def test_figure_links_are_stored_once_on_the_claims() -> None:
    names = [f.name for f in figures.FIGURES]
    assert len(names) == len(set(names)) >= 10
    for f in figures.FIGURES:
        # the figure's claims are read from the registry: exactly the claims that name it
        assert f.claims == tuple(c.id for c in claims.REGISTRY.values() if f.name in c.figures)
        assert f.claims and set(f.claims) <= set(claims.REGISTRY), f.name
        assert len(f.caption) > 40
    # every figure a claim points to exists
    fig_names = set(names)
    for c in claims.REGISTRY.values():
        assert set(c.figures) <= fig_names, (c.id, c.figures)
    assert set(figures.FIGURES[0].claims) == {"G15"}  # esd_mp_fit illustrates G15, and G15 says so


def test_quick_figures_are_valid_pngs(tmp_path: Path) -> None:
    only = ["esd_mp_fit", "certificate_tightness", "margin_vs_eta", "bbp_map", "budget_failure_vs_delta"]
    rc = cli.main(["figures", "--out", str(tmp_path), "--quick", "--only", *only])
    assert rc == 0
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    assert sorted(e["name"] for e in man["figures"]) == sorted(only)
    for e in man["figures"]:
        w, h = _png_size(tmp_path / e["file"])
        assert 400 <= w <= 3000 and 300 <= h <= 3000, (e["file"], w, h)
        assert (tmp_path / e["file"]).stat().st_size > 20_000  # not an empty canvas
        assert set(e["claims"]) <= set(claims.REGISTRY) and e["caption"]
    esd = next(e for e in man["figures"] if e["name"] == "esd_mp_fit")
    assert "MiniLM" in esd["caption"] and "NOT ViT-B" in esd["caption"]


def test_unknown_figure_name_is_an_error(tmp_path: Path) -> None:
    assert cli.main(["figures", "--out", str(tmp_path), "--only", "nope"]) == EXIT_BAD_INPUT
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    assert cli.main(["figures", "--out", str(tmp_path / "file"), "--only", "bbp_map"]) == EXIT_BAD_INPUT


@pytest.mark.slow
def test_all_quick_figures(tmp_path: Path) -> None:
    man = figures.make_all(tmp_path, quick=True)
    assert len(man["figures"]) == len(figures.FIGURES)
    for e in man["figures"]:
        _png_size(tmp_path / e["file"])
