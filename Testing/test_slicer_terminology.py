"""Segment names, colours and terminology strings (Slicer-free)."""

from __future__ import annotations

from pathlib import Path

import pytest

from GraTaSegmenterLib.slicer_support.terminology import (Coded, load_terms, match_term, terms_from_card,
                                                            display_name)

TERM_FILE = (Path(__file__).resolve().parents[1] / "GraTaSegmenter" / "Resources" / "Terminology"
             / "SegmentationCategoryTypeModifier-GraTaSegmenter.term.json")


def test_the_term_file_codes_the_optic_disc_and_cup():
    terms = load_terms(TERM_FILE)
    disc, cup = match_term(terms, "optic disc"), match_term(terms, "Optic_Cup")
    assert disc.type == Coded("SCT", "81016008", "Optic nerve head")  # DICOM CID 4209
    assert disc.category == Coded("SCT", "123037004", "Anatomical Structure")  # as in Slicer's general anatomy
    assert cup.type.meaning == "Optic disc cup"
    assert (disc.label, cup.label) == (1, 2)
    assert all(0 <= c <= 1 for c in disc.color + cup.color)


def test_terminology_entry_has_the_seven_fields_slicer_deserializes():
    disc = match_term(load_terms(TERM_FILE), "optic disc")
    entry = disc.terminology_entry()
    fields = entry.split("~")
    assert len(fields) == 7
    assert fields[0] == "Segmentation category and type - GraTaSegmenter"
    assert fields[1] == "SCT^123037004^Anatomical Structure" and fields[2] == "SCT^81016008^Optic nerve head"
    assert fields[3] == "^^" and fields[4] == "Anatomic codes - DICOM master list"


def test_match_falls_back_to_the_label_value_and_the_code_meaning():
    terms = load_terms(TERM_FILE)
    assert match_term(terms, "Segment_2", label=2).name == "optic cup"
    assert match_term(terms, "optic nerve head").name == "optic disc"
    assert match_term(terms, "liver", label=7) is None


def test_any_model_file_gets_names_colours_and_codes_from_its_card():
    card = {"classes": [{"name": "liver", "label": 1, "color": [1.0, 0.5, 0.0],
                         "category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
                         "type": ["SCT", "10200004", "Liver"]},
                        {"name": "blob", "label": 2, "color": [0, 0, 1]}]}
    liver, blob = terms_from_card(card)
    assert liver.terminology_entry().split("~")[2] == "SCT^10200004^Liver"
    assert blob.terminology_entry().split("~")[1:3] == ["^^", "^^"] and blob.color == (0.0, 0.0, 1.0)


def test_codes_with_separators_are_refused():
    with pytest.raises(ValueError):
        Coded("SCT", "1~2", "x").serialize()
    assert display_name("optic_cup") == "Optic cup"


def test_the_engine_names_the_context_of_the_extensions_term_file():
    """The .seg.nrrd files of the command line name the context the module registers."""
    import json

    from GraTaSegmenterLib.terminology_contexts import TERMINOLOGY_CONTEXT

    term_file = (Path(__file__).resolve().parents[1] / "GraTaSegmenter" / "Resources" / "Terminology"
                 / "SegmentationCategoryTypeModifier-GraTaSegmenter.term.json")
    assert json.loads(term_file.read_text(encoding="utf-8"))["SegmentationCategoryTypeContextName"] == \
        TERMINOLOGY_CONTEXT
