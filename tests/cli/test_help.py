"""``--help`` of train.py, evaluate.py and predict.py: plain text, every option explained."""

from __future__ import annotations

import argparse
import re

import pytest

from rsfusion.cli import evaluate, export, predict, quantize, train

PARSERS = {"train": train.build_parser, "evaluate": evaluate.build_parser,
           "predict": predict.build_parser, "export": export.build_parser,
           "quantize": quantize.build_parser}  # fmt: skip
#: reStructuredText / Markdown markup that a terminal prints raw.
MARKUP = re.compile(r"``|\*\*|:(?:class|func|mod|meth|attr):`")


@pytest.mark.parametrize("name", PARSERS)
def test_help_is_plain_text_with_every_option_explained(name: str) -> None:
    parser = PARSERS[name]()
    text = parser.format_help()

    assert not MARKUP.search(text), f"{name} --help prints markup: {MARKUP.search(text)}"
    assert parser.description and parser.description.strip().splitlines()[0] in text
    # the description's paragraphs and example lines keep their line breaks
    assert parser.formatter_class is argparse.RawDescriptionHelpFormatter
    assert "\n\n" in parser.description.strip()
    silent = [
        action.option_strings
        for action in parser._actions
        if action.option_strings and not (action.help and action.help.strip())
    ]
    assert silent == [], f"{name}: options without a help text: {silent}"
