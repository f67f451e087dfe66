"""Captions of a world spec (sora_jax/data/world.py has the schema) in three styles: the short
prompt, a medium one with size and background, and a long recaption of every object, the
background, the camera and the occluder."""

from __future__ import annotations

# fmt: off
STYLES = ("short", "medium", "long")
MOTION_PHRASES = {  # short / medium prompts
    "left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
    "up-left": "moving up and to the left", "up-right": "moving up and to the right",
    "down-left": "moving down and to the left", "down-right": "moving down and to the right",
    "bounce": "bouncing", "grow": "growing", "shrink": "shrinking", "still": "standing still",
}
# The way an occluding bar sweeps: (decreasing, increasing) position along its axis of motion.
BAR_WAYS = {"vertical": ("leftward", "rightward"), "horizontal": ("upward", "downward")}
# Its pace by its travel |end - start| (frame lengths over the clip; the world's thirds are
# ~0.79 and ~1.11): (up to, word). The bar crosses the subject at mid-clip and clears it by
# t = 0.88, so its speed follows from the subject's velocity and size; the eighteenth GPU run's
# DiT drew every bar at about one speed (its speed over the world's against the world's,
# r = -0.65; the slowest third 1.31x too fast, and those scenes kept the object least).
BAR_PACES = ((0.8, "slowly"), (1.1, "steadily"), (float("inf"), "quickly"))
_REGIONS = (("the top left", "the top", "the top right"), ("the left", "the centre", "the right"),
            ("the bottom left", "the bottom", "the bottom right"))

# fmt: on


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _verb(obj: dict, image: bool) -> str:
    """Long-caption verb phrase with where the object starts."""
    x, y = obj["start"]
    where, m = _REGIONS[min(int(y * 3), 2)][min(int(x * 3), 2)], obj["motion"]
    if image or m == "still":
        return f"{'sits' if image else 'stays still'} in {where}"
    if m == "bounce":
        return f"bounces up and down {('once', 'twice')[obj['bounces'] - 1]} near {where}"
    if m in ("grow", "shrink"):
        return f"{'grows larger' if m == 'grow' else 'shrinks'} in {where}"
    return f"{MOTION_PHRASES[m].replace('moving', 'moves')}, starting near {where}"


def _long(spec: dict) -> str:
    subj, image, bg = spec["objects"][0], spec["image"], spec["background"]
    noun = lambda o: f"{o['size']} {o['color']} {o['shape']}"
    if image:
        out = [f"A still image of {_a(noun(subj))} that {_verb(subj, True)}."]
    else:
        out = [f"{_a(noun(subj)).capitalize()} {_verb(subj, False)}."]
    out += [f"{_a(noun(o)).capitalize()} {_verb(o, image)}." for o in spec["objects"][1:]]
    out.append("The background is " + {
        "flat": f"plain {bg['color']}.",
        "gradient": f"a {bg['tone']} gradient from {bg['color']} to {bg.get('color2')}.",
        "texture": f"{bg['color']} with a faint {bg.get('pattern')} texture.",
    }[bg["kind"]])  # fmt: skip
    if spec["camera"]["pan"] != "none":
        out.append(f"The camera pans {spec['camera']['pan']}.")
    if occ := spec.get("occluder"):
        # The way the bar goes in a word of its own (BAR_WAYS), not in the order of two words
        # both ways share ("from top to bottom" / "from bottom to top"): the eighteenth GPU run's
        # DiT, trained on the latter, moved the bar the captioned way in 49 of the 94 occlusion
        # scenes where it drew one (chance; the subject's "moves left", ... 0.91), though
        # MiniLM's features of the two words tell source from destination (a linear probe:
        # 1.00; tools/experiments/bar_word_probe.py, evaluate.occluder_motion, world_runs.md).
        way = BAR_WAYS[occ["orientation"]][occ["end"] > occ["start"]]
        travel = abs(occ["end"] - occ["start"])
        pace = next(word for limit, word in BAR_PACES if travel <= limit)
        out.append(
            f"A {occ['color']} {occ['orientation']} bar sweeps {pace} {way}, hiding "
            f"the {subj['color']} {subj['shape']} for a moment before it reappears."
        )
    return " ".join(out)


def describe(spec: dict, style: str = "short") -> str:
    """Caption of a spec in one style: 'short' (the prompt), 'medium', 'long' (a recaption).

    short: "a red circle moving left"; medium adds size and background; long describes every
    object, the background, camera pan and occluder in several sentences.
    """
    subj, image, bg = spec["objects"][0], spec["image"], spec["background"]
    if style == "long":
        return _long(spec)
    if style not in STYLES:
        raise ValueError(f"Unknown caption style {style!r}; expected one of {STYLES}.")
    size = f"{subj['size']} " if style == "medium" else ""
    noun = _a(f"{size}{subj['color']} {subj['shape']}")
    what = f"an image of {noun}" if image else f"{noun} {MOTION_PHRASES[subj['motion']]}"
    if style == "short":
        return what
    kind = {"flat": "plain", "gradient": "gradient", "texture": "textured"}[bg["kind"]]
    return f"{what} on a {bg['tone']} {kind} background"
