"""The Hugging Face hub, asked only when it can answer. An offline machine is found out once per process, by
looking up the hub's host; huggingface_hub is then put in offline mode, so a hub id loads from the local cache or
fails at once with one line, instead of after five retries per file (46 s and 22 lines of warnings on a machine
without DNS)."""

from __future__ import annotations

import functools
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError


@functools.cache
def offline() -> bool:
    """True when the hub cannot be reached (huggingface_hub is then in offline mode: cache only) or was set
    offline (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        try:
            socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname or "huggingface.co", 443)
        except OSError:
            constants.HF_HUB_OFFLINE = True
    return bool(constants.HF_HUB_OFFLINE)


def check_reachable(refs: dict[str, str]) -> None:
    """Each of `refs` (flag -> resolved reference) that names a hub id can be had: the hub answers, or the local
    cache holds it. Checked once before work is split among processes, so an offline machine gets one line."""
    from huggingface_hub import try_to_load_from_cache

    from .assets import missing_local_path

    hub_ids = {flag: ref for flag, ref in refs.items()  # a local path, there or not, is the loader's to judge
               if not Path(ref).expanduser().exists() and not missing_local_path(ref)}
    if not hub_ids or not offline():
        return
    for flag, ref in hub_ids.items():
        try:
            cached = try_to_load_from_cache(ref, "config.json")
        except ValueError:  # not a valid hub id either: the loader says what it is
            continue
        if not isinstance(cached, str):
            raise UserError(f"{flag} {ref}: this machine cannot reach the Hugging Face hub and its cache has no copy; "
                            "give a local folder (on a world-made bench, 'builtin')")
