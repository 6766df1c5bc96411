"""Edit instructions ("make the red circle blue") read by rules, and the ShapeWorld caption they rewrite.

An instruction names one object of the caption by its colour, its shape or both ("the red circle", "the circle",
"the red one", "it") and what it becomes: a colour, a shape or both ("blue", "a square", "a green triangle"). The
object keeps its place, so the rewritten caption keeps the caption's order (SHAPEWORLD.md: centres do not move).
Forms read: make / turn / paint / colour the X Y; turn the X into a Y; change the X to / into a Y; replace the X with
a Y (a leading "please" and a final full stop are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

from .shapeworld.world import COLORS, SHAPES, format_caption, parse_caption

__all__ = ["Instruction", "parse_instruction", "apply_instruction", "rewrite_caption"]

VERBS = ("make", "turn", "change", "replace", "paint", "color", "colour", "recolor", "recolour")
CONNECTORS = ("into", "to", "with", "in")
ARTICLES = ("a", "an")
NOUNS = ("object", "shape", "one")  # "the red one", "a blue one": no shape named
MAX_LENGTH = 300
FORMS = "'make the red circle blue', 'turn the circle into a square', 'replace the blue square with a red triangle'"


@dataclass(frozen=True)
class Instruction:
    """Which object (colour and/or shape; neither: "it", the only object) and what it becomes."""

    color: str | None  # the object's colour as named, None when not named
    shape: str | None
    new_color: str | None  # None: keeps its colour
    new_shape: str | None

    @property
    def named(self) -> str:
        """The object as the instruction names it: "red circle", "circle", "red object", "object"."""
        return " ".join(w for w in (self.color, self.shape or "object") if w)


def _take(words: list[str], i: int, choices) -> tuple[str | None, int]:
    """words[i] when it is one of choices (and the next index), else (None, i)."""
    return (words[i], i + 1) if i < len(words) and words[i] in choices else (None, i)


def parse_instruction(text: str) -> Instruction:
    """The object an instruction names and what it becomes; ValueError for anything the rules cannot read."""
    if not isinstance(text, str):
        raise ValueError(f"an instruction must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"an instruction has at most {MAX_LENGTH} characters, got {len(text)}")
    words = text.casefold().replace(",", " ").strip().rstrip(".!").split()
    words = words[1:] if words[:1] == ["please"] else words
    verb, i = _take(words, 0, VERBS)
    if verb is None:
        raise ValueError(f"cannot read the instruction {text!r}: it should start with one of {', '.join(VERBS)} ({FORMS})")
    if words[i : i + 1] == ["it"]:
        color = shape = None
        i += 1
    else:
        _, i = _take(words, i, ("the",) + ARTICLES)
        color, i = _take(words, i, COLORS)
        shape, i = _take(words, i, SHAPES)
        noun, i = _take(words, i, NOUNS) if shape is None else (None, i)
        if color is None and shape is None and noun is None:
            raise ValueError(f"cannot read the instruction {text!r}: name the object to change by its colour or shape "
                             f"({FORMS})")
    _, i = _take(words, i, CONNECTORS)
    _, i = _take(words, i, ARTICLES)
    new_color, i = _take(words, i, COLORS)
    new_shape, i = _take(words, i, SHAPES)
    _, i = _take(words, i, NOUNS) if new_shape is None else (None, i)
    if i < len(words) or (new_color is None and new_shape is None):
        rest = " ".join(words[i:]) or "nothing"
        raise ValueError(f"cannot read the instruction {text!r} from {rest!r} on: say what the object becomes, a colour "
                         f"({', '.join(COLORS)}) and/or a shape ({', '.join(SHAPES)}) ({FORMS})")
    return Instruction(color, shape, new_color, new_shape)


def apply_instruction(caption: str, instruction: Instruction) -> str:
    """The caption with the one object the instruction names changed; ValueError when no object or several match,
    when nothing would change, or when the scene would hold two objects of one colour and shape."""
    background, objects = parse_caption(caption)
    matches = [k for k, (c, s) in enumerate(objects) if instruction.color in (None, c) and instruction.shape in (None, s)]
    if not matches:
        raise ValueError(f"the image has no {instruction.named} to change (its caption: {caption!r})")
    if len(matches) > 1:
        found = " and ".join(f"a {c} {s}" for c, s in objects)
        raise ValueError(f"'the {instruction.named}' is ambiguous: the image shows {found}; name the object's colour "
                         "and shape")
    k = matches[0]
    old = objects[k]
    new = (instruction.new_color or old[0], instruction.new_shape or old[1])
    if new == old:
        raise ValueError(f"the instruction changes nothing: the {instruction.named} is already a {' '.join(old)}")
    if new in objects:
        raise ValueError(f"the edit would make two {' '.join(new)}s, which a ShapeWorld scene never holds")
    return format_caption(background, objects[:k] + [new] + objects[k + 1 :])


def rewrite_caption(caption: str, instruction: str) -> str:
    """The caption of the scene after the instruction: parse_instruction, then apply_instruction."""
    return apply_instruction(caption, parse_instruction(instruction))
