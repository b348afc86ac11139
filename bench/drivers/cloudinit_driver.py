"""Peer 2: cloud-init's Azure report-ready path (Debian's package, extracted, never installed).

Does what cloud-init's Azure datasource does on a first boot, through cloud-init's own functions: crawl
IMDS with `DataSourceAzure._get_metadata_from_imds` (its retry callback included), write
`compute.osProfile.computerName` to `--hostname-file` (cloud-init would set the hostname), then
`helpers.azure.get_metadata_from_fabric(endpoint)`: goal state, then the Ready POST, with its
`http_with_retries` policy untouched. Left out: DHCP, the OVF media, the rest of `cloud-init init`
(so cloud-init's real run costs more than this).

Redirections (in this process only, never in cloud-init's files): the WireServer endpoint is an argument
of `get_metadata_from_fabric` ("host:port" works as is); the IMDS URL is baked into an Enum at import, so
the crawl is handed an object whose `.value` is our URL; the KVP log-index file goes to a temp dir.
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

import loopback_guard

loopback_guard.install()


def main() -> int:
    args = loopback_guard.driver_args(__doc__)
    wireserver = args.wireserver
    imds = args.imds

    from cloudinit.sources import DataSourceAzure as ds
    from cloudinit.sources.helpers import azure

    azure.LOG_PUSHED_TO_KVP_INDEX_FILE = str(Path(tempfile.mkdtemp()) / "log_pushed_to_kvp_index")
    md_type = types.SimpleNamespace(value=f"{imds}/metadata/instance")
    metadata = ds._get_metadata_from_imds(retries=10, exc_cb=ds.imds_readurl_exception_callback,
                                          md_type=md_type, api_version=ds.IMDS_VER_WANT)
    name = metadata.get("compute", {}).get("osProfile", {}).get("computerName")
    if name:
        args.hostname_file.write_text(name + "\n")
    endpoint = wireserver.split("://", 1)[1].rstrip("/")
    azure.get_metadata_from_fabric(endpoint=endpoint)
    print(json.dumps({"hostname": name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
