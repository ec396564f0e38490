"""``deltaimg apply`` without an engine: verify a bundle, rebuild the target image into an archive.

Order matters: the signature and every payload hash are checked, and the base is checked against
the bundle, before anything is written; the archive is written to a temporary file that is
renamed into place only after every layer hashed to its diff_id.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import ExitStack

from deltaimg import interrupts
from deltaimg.apply.chain import refuse_downgrade
from deltaimg.apply.rebuild import Rebuild, check_base, layer_sources, load_target_config, read_rebuilds, shared_from
from deltaimg.bundle.reader import Bundle
from deltaimg.bundle.signing import public_file_mode
from deltaimg.delta.base_content import BaseContent
from deltaimg.errors import WRITE_FAILURES, BaseMismatchError, ImageReadError, IntegrityError, OutputError
from deltaimg.images.model import Image
from deltaimg.progress import Advance
from deltaimg.tar import writer as archivewriter


def apply_to_archive(bundle: Bundle, base: Image, output: str, force: bool = False,
                     advance: Advance | None = None, allow_downgrade: bool = False) -> Rebuild:
    """Rebuild the bundle's target image as a ``docker save`` archive at ``output``; ``advance`` is
    told the bytes of every layer written (:func:`deltaimg.apply.rebuild.rebuild_size` in all)."""
    return apply_images_to_archive(bundle, [base], output, force, advance, allow_downgrade)[0]


def apply_images_to_archive(bundle: Bundle, bases: list[Image], output: str, force: bool = False,
                            advance: Advance | None = None, allow_downgrade: bool = False) -> list[Rebuild]:
    """Rebuild the target of every base given (a bundle of several images may update several, and
    each base given must be one it updates) into one ``docker save`` archive at ``output``, which
    ``docker load`` takes whole. Returns what was rebuilt, in the bundle's order."""
    rebuilds = read_rebuilds(bundle)
    given = {base.config_digest: base for base in bases}
    for base in bases:
        if not any(r.base_id == base.config_digest for r in rebuilds):
            if len(rebuilds) == 1:
                check_base(rebuilds[0], base, bundle.path)
            raise BaseMismatchError(
                f"{bundle.path} updates images {', '.join(r.base_id[:19] for r in rebuilds)}, but a base given is "
                f"{base.config_digest[:19]} ({' '.join(base.tags) or base.source}); use the images the bundle was made from")
    chosen = [r for r in rebuilds if r.base_id in given]
    prepared = shared_from(rebuilds, chosen)
    for rebuild in prepared:
        if rebuild.base_id not in given:
            raise BaseMismatchError(f"{bundle.path}: a target given shares a layer with {rebuild.target.name}, which is "
                                    f"rebuilt from {rebuild.base.name}; give that base too (--base)")
    if not allow_downgrade:
        refuse_downgrade(bundle)
    for rebuild in prepared:
        base = given[rebuild.base_id]
        load_target_config(bundle, rebuild, base.config_bytes)
        if base.diff_ids != rebuild.base_diff_ids:
            raise BaseMismatchError(f"{bundle.path}: the base image's layers differ from its config's")
    if os.path.lexists(output):  # lexists: a dangling symlink is there too
        if not _replaceable(output):
            raise OutputError(f"{output} exists and is not a regular file; choose another -o")
        if not force:
            raise OutputError(f"{output} exists; choose another path or pass --force")
    directory = os.path.dirname(os.path.abspath(output))
    tmp = ""
    try:
        with interrupts.held():  # an interrupt is raised inside the try, with ``tmp`` set
            try:
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".deltaimg-", suffix=".tar.tmp")
            except OSError as exc:
                raise OutputError(f"cannot write in {directory}: {exc.strerror}") from None
        os.chmod(tmp, public_file_mode())  # what docker save > FILE would give it; mkstemp makes it private
        with os.fdopen(fd, "wb") as out:
            with interrupts.work_folder("deltaimg-apply-") as workdir, ExitStack() as stack:
                contents, shared, images = [], {}, []
                for rebuild in prepared:
                    content = stack.enter_context(BaseContent(given[rebuild.base_id], workdir))
                    contents.append(content)
                    sources = layer_sources(bundle, rebuild, content, advance, shared)
                    if rebuild in chosen:
                        images.append((rebuild.target_config, rebuild.target_tags, sources))
                try:
                    archivewriter.write_images(out, images)
                except IntegrityError:
                    for content in contents:
                        content.check_layers_read()  # a damaged base is named as such, not blamed on the bundle
                    raise
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES and exc.filename != tmp:
            raise ImageReadError(f"cannot rebuild {output} from the base image {bases[0].source}: {exc.strerror}") from None
        raise OutputError(f"cannot write {output}: {exc.strerror}") from None
    finally:
        if tmp:
            interrupts.remove(tmp)
    return chosen


def _replaceable(path: str) -> bool:
    """A regular file, or a symlink (renamed over, never followed): never a device, FIFO or folder."""
    mode = os.lstat(path).st_mode
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
