"""Edit instructions read by rules (instructions.py) and the ShapeEdit instructions the benchmark makes from cases."""

import pytest

from diffedit.bench.prompted import case_instruction
from diffedit.instructions import parse_instruction, rewrite_caption
from diffedit.shapeworld.world import edit_cases

TWO = "a red circle and a blue square on a gray background"


@pytest.mark.parametrize("instruction, expected", [
    ("make the red circle blue", "a blue circle and a blue square on a gray background"),
    ("make the circle a triangle", "a red triangle and a blue square on a gray background"),
    ("turn the blue square into a green triangle", "a red circle and a green triangle on a gray background"),
    ("change the red circle to a yellow square", "a yellow square and a blue square on a gray background"),
    ("replace the red circle with a white one", "a white circle and a blue square on a gray background"),
    ("Please paint the square purple.", "a red circle and a purple square on a gray background"),
    ("make the red one a square", "a red square and a blue square on a gray background"),
    ("replace the blue square with an yellow circle", "a red circle and a yellow circle on a gray background"),
])
def test_an_instruction_rewrites_the_one_object_it_names_in_place(instruction, expected):
    assert rewrite_caption(TWO, instruction) == expected


def test_it_names_the_only_object():
    assert rewrite_caption("a red circle on a dark background", "make it a blue square") == (
        "a blue square on a dark background")
    with pytest.raises(ValueError, match="ambiguous"):
        rewrite_caption(TWO, "make it green")


@pytest.mark.parametrize("instruction, message", [
    ("make the green circle blue", "no green circle"),
    ("make the circle red", "changes nothing"),
    ("make the red circle a blue square", "two blue squares"),
    ("make the red circle fly", "from 'fly' on"),
    ("make the red circle", "say what the object becomes"),
    ("draw a red circle", "should start with"),
    ("make blue", "say what the object becomes"),
    ("make the big thing blue", "name the object"),
])
def test_instructions_that_cannot_apply_say_why(instruction, message):
    with pytest.raises(ValueError, match=message):
        rewrite_caption(TWO, instruction)


def test_an_ambiguous_object_asks_for_its_colour_and_shape():
    with pytest.raises(ValueError, match="ambiguous"):
        rewrite_caption("a red circle and a red square on a gray background", "make the red one blue")
    assert parse_instruction("turn the square into a circle").shape == "square"


def test_every_shapeedit_case_instruction_gives_the_case_target():
    for case in edit_cases(72, seed=5):
        assert rewrite_caption(case.source, case_instruction(case)) == case.target, case_instruction(case)
