"""Class atlases, two-class comparisons and the patch experiment (Carter et al. 2019, sections 4 and 5).

Everything here works on an existing bundle's rows: which rows belong to a
class or a pair (:mod:`.selection`), where a pair's rows go on the attribution
difference axis (:mod:`.axis`), and whether pasting an icon onto real images
flips the model's decision (:mod:`.patches`).
"""

from atlas.classes.axis import difference_axis, line_layout
from atlas.classes.patches import PATCH_KINDS, FlipCount, paste, wilson_interval
from atlas.classes.selection import ClassRef, class_counts, folder_name, pair_rows, resolve_class, select_rows

__all__ = [
    "PATCH_KINDS",
    "ClassRef",
    "FlipCount",
    "class_counts",
    "difference_axis",
    "folder_name",
    "line_layout",
    "pair_rows",
    "paste",
    "resolve_class",
    "select_rows",
    "wilson_interval",
]
