"""Resize-18 added ``antialias``, ``axes`` and ``keep_aspect_ratio_policy``; Resize-19 added the
``half_pixel_symmetric`` coordinate mode. onnx2torch's Resize-13 converter serves nodes that
leave them at their defaults.
"""

from __future__ import annotations

from audit.converters.guards import Guard, attrs


def refuse(node, version, consts):
    a = attrs(node)
    if a.get("antialias", 0) != 0:
        return "antialias=1 is not supported"
    if "axes" in a:
        return "the axes attribute is not supported"
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return f"keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']!r} is not supported"
    if a.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        return "coordinate_transformation_mode='half_pixel_symmetric' is not supported"
    return None


GUARD = Guard("Resize", refuse, admits={18: 13},
              note="antialias=0, no axes, keep_aspect_ratio_policy='stretch', no half_pixel_symmetric")
