"""Which cells can run at all: an adapter (with its options) against a backbone's anatomy.

An impossible pair (VPT on SAM's grid of patches, FacT on an MLP width that d does not
divide) is a fact about the pair, not a failure: ``adaptbench validate`` lists it, the matrix
runner records its cells ``n/a`` without running them, and the leaderboard shows ``n/a``. The
answer is the adapter's own ``unsupported(anatomy, config)``; the anatomy comes from the
backbone built on the meta device (no weights read), once per backbone name.
"""

from __future__ import annotations

from typing import Any

from ..errors import AdaptbenchError, one_line
from ..records import not_applicable_message


class Capabilities:
    """Answers "can this adapter run on this backbone?", caching each backbone's anatomy."""

    def __init__(self) -> None:
        self._anatomies: dict[str, Any] = {}  # name -> Anatomy, or the AdaptbenchError building it

    def anatomy(self, backbone: str):
        """The backbone's anatomy; raises :class:`AdaptbenchError` when it cannot be built."""
        if backbone not in self._anatomies:
            self._anatomies[backbone] = _build_anatomy(backbone)
        found = self._anatomies[backbone]
        if isinstance(found, AdaptbenchError):
            raise found
        return found

    def reason(self, backbone: str, adapter: str, options: dict[str, Any]) -> str | None:
        """Why ``adapter`` with ``options`` cannot run on ``backbone``, or None.

        None also when it cannot tell (the anatomy or the options are broken): those are
        ``validate`` problems, and a cell that runs anyway fails with the real error.
        """
        from ..adapters import adapter_class

        try:
            anatomy = self.anatomy(backbone)
            cls = adapter_class(adapter)
            config = cls.config_class.from_dict(dict(options), adapter=adapter)
        except Exception:  # noqa: BLE001 - a plugin's config may raise anything; reported elsewhere
            return None
        return cls.unsupported(anatomy, config)

    def message(self, backbone: str, adapter: str, options: dict[str, Any]) -> str | None:
        """The n/a line of the pair (``"<adapter> on <backbone>: n/a: <reason>"``), or None."""
        reason = self.reason(backbone, adapter, options)
        return None if reason is None else not_applicable_message(adapter, backbone, reason)

    def cell_message(self, cell) -> str | None:
        """The n/a line of a matrix cell, or None when it can run."""
        config = cell.config
        return self.message(config.backbone, config.adapter, config.adapter_options)


def _build_anatomy(backbone: str):
    from ..backbones import backbone_anatomy

    try:
        return backbone_anatomy(backbone)
    except AdaptbenchError as err:
        return err
    except Exception as err:  # noqa: BLE001 - a family or plugin may raise anything
        return AdaptbenchError(f"backbone {backbone!r} cannot be built to read its anatomy: {one_line(err)}")
