"""A source whose images are a dataset's items by position (a torchvision dataset, a caller's in-memory one).

Shards are ranges of indices, image ids are positions, and an item that cannot be read becomes a record with its
error, skipped and counted like an unreadable file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from PIL import Image

from atlas.images.source import ImageRecord, Shard, index_shards
from atlas.storage import Location


class IndexedSource:
    """The shared reading; a subclass says where its dataset is and how one of its items becomes an image."""

    def dataset(self) -> Any:
        raise NotImplementedError

    def item_name(self, index: int) -> str:
        return str(index)

    def read_item(self, item: Any) -> tuple[Image.Image, int | None]:
        """An item as an 8-bit image and its label (None without one); raises for an item that is not an image."""
        raise NotImplementedError

    def plan(self, workdir: Location, limit: int | None, shard_size: int) -> list[Shard]:
        n_images = len(self.dataset())
        return index_shards(n_images if limit is None else min(limit, n_images), shard_size)

    def read_ids(self, ids: Iterable[int]) -> Iterator[ImageRecord]:
        """The images with these ids, in increasing order (ids are positions in the source, as in ``plan``)."""
        for image_id in sorted(set(ids)):
            yield from self.read(Shard(0, image_id, 1, image_id))

    def read(self, shard: Shard) -> Iterator[ImageRecord]:
        dataset = self.dataset()
        for position in range(shard.count):
            index = shard.offset + position
            image_id, name = shard.start + position, self.item_name(index)
            try:
                image, label = self.read_item(dataset[index])
                record = ImageRecord(image_id, name, image, label=label)
            except Exception as err:  # one bad item is skipped and counted, never the end of a run
                record = ImageRecord(image_id, name, None, error=f"{type(err).__name__}: {err}".splitlines()[0])
            yield record
