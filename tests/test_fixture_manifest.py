"""The repository's golden fixtures are the ones the official code wrote, byte for byte.

``tests/fixtures/MANIFEST.sha256`` (``sha256sum`` format) names every file and its digest; an
edited, missing or extra file fails here. Where ``../shared/fixtures`` (the reference copy) sits
beside the checkout, the two trees must be identical too.
"""

import hashlib
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT

MANIFEST = FIXTURES / "MANIFEST.sha256"
REFERENCE = ROOT.parent / "shared" / "fixtures"


def read_manifest() -> dict[str, str]:
    """{relative path: sha256 hex} from the manifest's ``<digest>  <path>`` lines."""
    entries = {}
    for line in MANIFEST.read_text().splitlines():
        digest, name = line.split("  ", 1)
        entries[name] = digest
    return entries


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_fixture_matches_the_manifest():
    manifest = read_manifest()
    assert files_under(FIXTURES) - {MANIFEST.name} == set(manifest), "fixture files and manifest differ"
    changed = sorted(name for name, digest in manifest.items() if sha256(FIXTURES / name) != digest)
    assert not changed, f"fixtures differ from MANIFEST.sha256: {changed}"


def test_the_repository_copy_equals_the_reference_beside_it():
    if not REFERENCE.is_dir():
        pytest.skip(f"no reference copy at {REFERENCE} (a clone elsewhere): the manifest test covers it")
    assert files_under(REFERENCE) == files_under(FIXTURES) - {MANIFEST.name}
    differing = sorted(name for name in files_under(REFERENCE)
                       if (REFERENCE / name).read_bytes() != (FIXTURES / name).read_bytes())
    assert not differing, f"tests/fixtures differs from {REFERENCE}: {differing}"
