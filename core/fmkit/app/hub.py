"""Model folders on the Hugging Face Hub: ``hf://ORG/NAME[@REVISION]`` fetched through
``huggingface_hub``'s cache (``snapshot_download``: offline with ``HF_HUB_OFFLINE=1`` once it is
cached; ``HF_HOME`` / ``HF_HUB_CACHE`` say where), and a model folder uploaded (``fmkit push``).

``huggingface_hub`` is an optional dependency (``pip install 'fmkit[hub]'``), imported only here
and only when a Hub reference is used.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fmkit.errors import DependencyError, FmkitError

PREFIX = "hf://"
#: ORG/NAME as the Hub spells repositories: letters, digits, '-', '_' and '.', at most 96 per part
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", re.ASCII)
INSTALL = "pip install 'fmkit[hub]' (or pip install huggingface_hub)"


def is_hub_ref(text: str) -> bool:
    """Whether ``text`` names a model on the Hub (``hf://...``)."""
    return str(text).startswith(PREFIX)


def check_repo_id(repo_id: str, where: str) -> str:
    """``repo_id`` when it is ``ORG/NAME`` as the Hub spells it, else an error saying so."""
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id or repo_id.endswith(".git"):
        raise FmkitError(f"{repo_id!r} is not a Hugging Face repository name", where=where,
                         fix="write ORG/NAME (letters, digits, '-', '_', '.'; no '--' or '..'), e.g. acme/toy-moons")
    return repo_id


def parse_hub_ref(ref: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME[@REVISION]`` -> ``(ORG/NAME, REVISION or None)`` (a branch, tag or commit)."""
    body = ref[len(PREFIX):] if is_hub_ref(ref) else ref
    repo_id, at, revision = body.partition("@")
    check_repo_id(repo_id, where=ref)
    if at and not revision:
        raise FmkitError(f"{ref!r} names no revision after '@'", where=ref,
                         fix="write hf://ORG/NAME@REVISION (a branch, tag or commit), or leave out '@'")
    return repo_id, revision or None


def require_hub(purpose: str) -> Any:
    """The ``huggingface_hub`` module, or a DependencyError saying how to install it."""
    try:
        import huggingface_hub
    except ImportError:
        raise DependencyError(f"{purpose} needs the package huggingface_hub, which is not installed",
                              where="huggingface_hub", fix=INSTALL) from None
    return huggingface_hub


def download(ref: str) -> Path:
    """The local folder of ``hf://ORG/NAME[@REVISION]``: the snapshot in the Hub cache, downloaded first
    when it is not there (and the Hub reachable)."""
    from fmkit._version import __version__

    repo_id, revision = parse_hub_ref(ref)
    hub = require_hub(f"loading {ref}")
    from huggingface_hub import errors

    try:
        return Path(hub.snapshot_download(repo_id, revision=revision, library_name="fmkit",
                                          library_version=__version__))
    except getattr(errors, "IncompleteSnapshotError", ()):  # a partial snapshot (recent huggingface_hub only)
        raise FmkitError(f"the cached copy of {ref} is incomplete and the Hub cannot be reached", where=ref,
                         fix="download it again with network access (unset HF_HUB_OFFLINE)") from None
    except errors.LocalEntryNotFoundError:
        raise FmkitError(f"{ref} is not in the Hugging Face cache and cannot be downloaded (offline, or the Hub "
                         "cannot be reached)", where=f"{ref} (cache: {_cache_dir()})",
                         fix="download it once with network access (unset HF_HUB_OFFLINE), or point HF_HOME / "
                             "HF_HUB_CACHE at a cache that holds it") from None
    except errors.RevisionNotFoundError:
        raise FmkitError(f"{repo_id} has no revision {revision!r} on the Hub", where=ref,
                         fix="give a branch, tag or commit of the repository after '@' (default: main)") from None
    except errors.RepositoryNotFoundError:
        raise FmkitError(f"no model {repo_id} on the Hugging Face Hub (or it is private or gated and no token "
                         "allows it)", where=ref,
                         fix="check the name; for a private model log in first (`hf auth login`, or set HF_TOKEN)"
                         ) from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise FmkitError(f"cannot download {ref}: {exc}", where=ref,
                         fix="check the network and try again; a model in the cache loads offline with "
                             "HF_HUB_OFFLINE=1") from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def upload(folder: Path, repo_id: str, *, private: bool, revision: str | None, message: str) -> str:
    """Upload ``folder`` to the model repository ``repo_id`` (made when it does not exist) in one commit.
    The credentials are huggingface_hub's (HF_TOKEN, or `hf auth login`).

    Args:
        folder: the model folder (``fmkit export``); every file in it is uploaded.
        repo_id: the Hub model repository, ``ORG/NAME``.
        private: make the repository private when this call creates it (an existing one keeps its setting).
        revision: the branch to commit to (made when new); None: the default branch.
        message: the commit message.

    Returns:
        The URL of the commit.
    """
    from fmkit._version import __version__

    hub = require_hub("fmkit push")
    from huggingface_hub import errors

    api = hub.HfApi(library_name="fmkit", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message,
                                 revision=revision)
    except errors.LocalTokenNotFoundError:
        raise FmkitError("no Hugging Face token: pushing needs one", where="HF_TOKEN",
                         fix="log in with `hf auth login`, or set HF_TOKEN") from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise FmkitError(f"cannot upload to {repo_id}: {exc}", where=repo_id,
                         fix="check the token's write access to ORG (HF_TOKEN / `hf auth login`) and the network; "
                             "--dry-run lists what would be uploaded") from None
    return str(getattr(info, "commit_url", info))
