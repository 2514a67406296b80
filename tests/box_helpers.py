"""Pascal-VOC annotations for tests (tests/ is on sys.path under pytest)."""


def voc(objects, size=None) -> str:
    """A Pascal-VOC annotation: objects are (wnid, xmin, ymin, xmax, ymax); size (width, height)."""
    parts = ["<annotation>"]
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height></size>")
    for wnid, *box in objects:
        coords = "".join(
            f"<{n}>{v}</{n}>" for n, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
        )
        parts.append(f"<object><name>{wnid}</name><bndbox>{coords}</bndbox></object>")
    return "".join(parts) + "</annotation>"
