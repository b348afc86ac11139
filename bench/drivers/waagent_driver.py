"""Peer 3: WALinuxAgent's wire-protocol report-ready path (Debian's `waagent` package, extracted).

Through WALinuxAgent's own classes: `WireClient.check_wire_protocol_version()` (GET ?comp=versions, as
protocol detection does), the goal state via `GoalState(client)` (its 6 × 0.5 s wait for a RoleInstance and
`restutil`'s retry/throttle schedule untouched), `compute.name` from `ImdsClient.get_compute()`
written to `--hostname-file`, then `WireProtocol.report_provision_status(Ready)` → `WireClient.report_health`.
Left out: DHCP, the OVF media, the transport certificate (openssl) and the extra goal-state documents
(HostingEnvironmentConfig, SharedConfig) that the fake fabric does not serve: the real agent costs more.

Redirections, in this process only: `Lib.Dir` goes to a temp dir (WireClient creates a history dir there),
and `imds.IMDS_ENDPOINT` (a module constant: the IMDS address) is replaced by the fake's host:port.
"""

from __future__ import annotations

import json
import sys
import tempfile

import loopback_guard

loopback_guard.install()


def main() -> int:
    args = loopback_guard.driver_args(__doc__)
    endpoint = args.wireserver.split("://", 1)[1].rstrip("/")
    imds_endpoint = args.imds.split("://", 1)[1].rstrip("/")

    from azurelinuxagent.common import conf
    from azurelinuxagent.common.protocol import imds
    from azurelinuxagent.common.protocol.goal_state import GoalState
    from azurelinuxagent.common.protocol.restapi import ProvisionStatus
    from azurelinuxagent.common.protocol.wire import WireProtocol

    conf.__conf__.values["Lib.Dir"] = tempfile.mkdtemp()
    imds.IMDS_ENDPOINT = imds_endpoint

    protocol = WireProtocol(endpoint)
    client = protocol.client
    client.check_wire_protocol_version()
    client._goal_state = GoalState(client)
    compute = imds.get_imds_client(endpoint).get_compute()
    # ComputeInfo keeps no osProfile; WALinuxAgent takes the name from the OVF media, absent here.
    args.hostname_file.write_text(f"{compute.name}\n")
    protocol.report_provision_status(ProvisionStatus(status="Ready"))
    print(json.dumps({"incarnation": client._goal_state.incarnation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
