"""The README and docs/ pages: every relative link resolves, and the generated-figure machinery
(``harness.results.published``) rewrites blocks from records and catches a typed figure."""
import re
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.results import published

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "bash .ci/run" in text and "python -m harness experiment=fp16_vs_rtn" in text


def test_every_generated_block_has_a_spec_and_every_spec_is_used():
    specs = published.load_specs()
    used = {m["name"] for p in PAGES for m in published.BLOCK.finditer(p.read_text(encoding="utf-8"))}
    assert used == set(specs), (used ^ set(specs))


SPEC = """\
fixture_rows:
  kind: rows
  rows:
    - {name: FP16, select: FP16@run=5daa3d8e8b}
    - {name: "GPTQ-4, seeds 0 / 1 / 2", select: [GPTQ@run=b4b47b52c4, GPTQ@run=992541e3a2, GPTQ@run=9859a870cf]}
fixture_paired:
  kind: paired
  rows:
    - {name: RTN − FP16, a: RTN@run=b6384049b5, b: FP16@run=5daa3d8e8b}
"""


def _site(tmp_path: Path, page: str) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "published.yaml").write_text(SPEC)
    (tmp_path / "docs" / "page.md").write_text(page)
    (tmp_path / "README.md").write_text("# nothing generated here\n")
    return tmp_path


def test_refresh_fills_blocks_and_check_catches_a_typed_figure(tmp_path, monkeypatch):
    fixtures = REPO / "tests" / "fixtures"
    monkeypatch.setattr(published, "REFERENCE_DIR", fixtures)
    root = _site(tmp_path, "intro\n<!-- generated:fixture_rows -->\nstale\n<!-- /generated:fixture_rows -->\n"
                           "<!-- generated:fixture_paired (do not edit) -->\n<!-- /generated:fixture_paired -->\nend\n")
    pages = published.render_pages(root, fixtures)
    (old, new), = pages.values()
    assert "stale" in old and "stale" not in new and new.startswith("intro\n") and new.endswith("end\n")
    assert "| FP16 | 16 / 16.00 | 29.19 ± " in new and "52.83 / 53.35 / 55.97" in new
    assert "Holm" in new and "| RTN − FP16 | +20.69 [" in new
    (root / "docs" / "page.md").write_text(new)
    assert published.check(root, fixtures) == []
    (root / "docs" / "page.md").write_text(new.replace("29.19", "29.20"))  # a figure typed by hand
    (problem,) = published.check(root, fixtures)
    assert "docs/page.md" in problem and "29.20" in problem


def test_a_block_without_a_spec_is_refused(tmp_path):
    root = _site(tmp_path, "<!-- generated:nope -->\n<!-- /generated:nope -->\n")
    with pytest.raises(ConfigError, match="'nope' has no entry in docs/published.yaml"):
        published.render_pages(root, REPO / "tests" / "fixtures")


def test_the_check_cli_refuses_without_reference(run_cli):
    res = run_cli("harness.report", "--check")
    assert res.returncode == 2 and "use it with --reference" in res.stderr


def test_a_block_named_twice_in_the_spec_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys silently; the spec loader names the key instead."""
    spec = tmp_path / "published.yaml"
    block = "headline:\n  kind: rows\n  rows: []\n"
    spec.write_text(block + block)
    with pytest.raises(ConfigError, match="'headline' appears more than once"):
        published.load_specs(spec)
    spec.write_text(block)
    assert list(published.load_specs(spec)) == ["headline"]
