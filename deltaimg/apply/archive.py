"""``deltaimg apply`` without an engine: verify a bundle, rebuild the target image into an archive.

Order matters: the signature and every payload hash are checked, and the base is checked against
the bundle, before anything is written; the archive is written to a temporary file that is
renamed into place only after every layer hashed to its diff_id.
"""

from __future__ import annotations

import os
import stat
import tempfile

from deltaimg import interrupts
from deltaimg.apply.chain import refuse_downgrade
from deltaimg.apply.rebuild import Rebuild, check_base, layer_sources, load_target_config, read_rebuild
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
    rebuild = read_rebuild(bundle)
    check_base(rebuild, base, bundle.path)
    if not allow_downgrade:
        refuse_downgrade(bundle)
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
            with interrupts.work_folder("deltaimg-apply-") as workdir, BaseContent(base, workdir) as content:
                try:
                    archivewriter.write_image(out, rebuild.target_config, rebuild.target_tags,
                                              layer_sources(bundle, rebuild, content, advance))
                except IntegrityError:
                    content.check_layers_read()  # a damaged base is named as such, not blamed on the bundle
                    raise
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES and exc.filename != tmp:
            raise ImageReadError(f"cannot rebuild {output} from the base image {base.source}: {exc.strerror}") from None
        raise OutputError(f"cannot write {output}: {exc.strerror}") from None
    finally:
        if tmp:
            interrupts.remove(tmp)
    return rebuild


def _replaceable(path: str) -> bool:
    """A regular file, or a symlink (renamed over, never followed): never a device, FIFO or folder."""
    mode = os.lstat(path).st_mode
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
