"""One error family: every exception class lives in rsfusion/errors.py, user errors derive from
UserError, and the command-line tools catch that family once (never a bare KeyError)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rsfusion import errors
from rsfusion.cli import USER_ERRORS

PACKAGE = Path(__file__).parents[1] / "rsfusion"
#: internal control flow that never leaves its module: TypeMismatch becomes a ConfigError there,
#: PeakUnavailable a memory check skipped with its reason
INTERNAL = {"TypeMismatch", "PeakUnavailable"}


def _exception_classes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            if any(b.endswith(("Error", "Exception", "Unavailable")) for b in bases):
                found.append(node.name)
    return found


#: the QGIS plugin runs in QGIS's own Python (standard library and qgis only): it cannot import
#: rsfusion.errors, so its two exceptions live beside it
PLUGIN = PACKAGE / "qgis_plugin"


def test_every_exception_class_is_defined_in_errors_py():
    outside = {
        str(p.relative_to(PACKAGE.parent)): names
        for p in PACKAGE.rglob("*.py")
        if p.name != "errors.py"
        and PLUGIN not in p.parents
        and (names := sorted(set(_exception_classes(p)) - INTERNAL))
    }
    assert outside == {}
    assert set(_exception_classes(PACKAGE / "errors.py")) <= set(errors.__all__)


def test_user_errors_share_one_base_the_clis_catch():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.RsfusionError), name
    assert errors.UserError in USER_ERRORS and KeyError not in USER_ERRORS
    for cli in (PACKAGE / "cli").glob("*.py"):
        text = cli.read_text()
        assert "except KeyError" not in text and "except ValueError" not in text, cli.name


def test_an_unknown_name_is_a_key_error_without_quotes():
    err = errors.UnknownNameError("no modality 'x'; choose one of ['rgb']")
    assert isinstance(err, KeyError) and isinstance(err, errors.UserError)
    assert str(err) == "no modality 'x'; choose one of ['rgb']"
    with pytest.raises(KeyError):
        raise err


def test_a_missing_card_file_and_a_bad_precision_are_user_errors():
    from rsfusion.catalog import load_card
    from rsfusion.inference.runner import resolve_precision

    with pytest.raises(errors.UserError, match="did you mean 'vaihingen'"):
        load_card("vaihingn")
    import torch

    with pytest.raises(errors.UserError, match="fp16 autocast is for GPUs"):
        resolve_precision("fp16", torch.device("cpu"))
