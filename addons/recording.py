"""Recording hooks: every flow on record, durable before it goes upstream."""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

logger = logging.getLogger(__name__)

STORE_SCHEMES = ("file:", "s3://")


class Recording:
    """Writes each flow's records to the spool and, through it, to the store."""

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_store",
            str,
            "file:var/recordings",
            """
            Where sealed recording segments go: `s3://bucket/prefix` for S3 (or an
            S3-compatible store, see hoopgw_s3_endpoint_url), or `file:DIR`
            (`file:///abs/dir` or `file:relative/dir`) for a local directory, the
            embedded default.
            """,
        )
        loader.add_option(
            "hoopgw_s3_endpoint_url",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Endpoint URL of an S3-compatible store (MinIO, Ceph, moto) for
            hoopgw_store s3:// URLs; unset for AWS S3, where boto3's usual
            configuration (region, credentials, AWS_ENDPOINT_URL_S3) applies.
            """,
        )
        loader.add_option(
            "hoopgw_spool_dir",
            str,
            "var/spool",
            """
            Local directory of the write-ahead spool. Every request record is
            fsync'd here before the request goes upstream; segments leave the
            spool only once the store has verified them. Use a persistent disk.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_store" in updated:
            url = ctx.options.hoopgw_store
            if not url.startswith(STORE_SCHEMES):
                raise exceptions.OptionsError(
                    f"hoopgw_store: {url!r} has an unknown scheme; "
                    "use s3://bucket/prefix or file:DIR"
                )
