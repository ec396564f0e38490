"""The create body that recreates a container on a target image (what Docker Compose's recreate does).

A container is recreated from the configuration its user gave it, not from everything its inspect
data shows: the engine merges the image's defaults (Env, Cmd, Entrypoint, Labels, Healthcheck,
WorkingDir, User, ExposedPorts, Volumes, StopSignal, Shell) into the container's Config at create
time, and copying them would pin the base image's values onto the target image. So every Config value
equal to the base image's default is dropped, and the target image's defaults apply (an
``ENV VERSION=2`` in the target image is what the new container sees). The price: a value the user
set explicitly *to* the base image's default is dropped too; compose has the same blind spot.

The create call is the raw ``/containers/create`` body (``create_container_from_config``), built
from the old container's inspect data: it takes every HostConfig field as the engine reported it,
where the SDK's keyword arguments would need a translation per field and lose those it lacks.
HostConfig is copied whole (ports, restart policy, binds, mounts, tmpfs, devices, capabilities,
resources, log config, ...), with links turned back into ``name:alias`` form. Anonymous volumes
(image ``VOLUME`` or ``-v /path``) are reattached by their volume name as extra ``Mounts``, as
compose does, so their data carries over. Networks come back with their aliases (minus the old
container's short ID, which the engine adds itself), fixed IPs, links and driver options: the
primary network in the create call, the others connected before start (API < 1.44 takes one).
"""

from __future__ import annotations

import copy

# Config keys whose value the engine fills from the image when the user gives none.
IMAGE_DEFAULT_KEYS = ("User", "WorkingDir", "Healthcheck", "StopSignal", "Shell", "OnBuild")
COPIED_KEYS = ("Domainname", "AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin",
               "StdinOnce", "NetworkDisabled", "MacAddress", "StopTimeout")
ENDPOINT_KEYS = ("IPAMConfig", "Links", "Aliases", "DriverOpts")


def create_body(info: dict, base_config: dict, image_ref: str) -> tuple[dict, dict[str, dict]]:
    """The ``/containers/create`` body recreating the container ``info`` (its inspect data) on
    ``image_ref``, ``base_config`` being the Config of the image it runs now; and the endpoint
    configs of the networks to connect before start (the create call takes only one)."""
    config = _user_config(info, base_config)
    config["Image"] = image_ref
    config["HostConfig"] = _host_config(info)
    primary, others = _endpoints(info)
    if primary:
        config["NetworkingConfig"] = {"EndpointsConfig": primary}
    return config, others


def _user_config(info: dict, image_config: dict) -> dict:
    """The container's Config minus what the engine filled in from the image it runs now."""
    config, host = info["Config"], info["HostConfig"]
    body: dict = {key: config[key] for key in COPIED_KEYS if config.get(key)}
    shares_uts = host.get("NetworkMode", "") == "host" or host.get("NetworkMode", "").startswith("container:")
    # The engine sets an unset hostname to the short ID (or the host's name, which it refuses as input).
    if config.get("Hostname") and config["Hostname"] != info["Id"][:12] and not shares_uts:
        body["Hostname"] = config["Hostname"]
    for key in IMAGE_DEFAULT_KEYS:
        if config.get(key) and config[key] != image_config.get(key):
            body[key] = config[key]
    image_env = set(image_config.get("Env") or [])
    env = [e for e in config.get("Env") or [] if e not in image_env]
    if env:
        body["Env"] = env
    image_labels = image_config.get("Labels") or {}
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if image_labels.get(k) != v}
    if labels:
        body["Labels"] = labels
    bound = host.get("PortBindings") or {}
    image_ports = image_config.get("ExposedPorts") or {}
    ports = {p: {} for p in config.get("ExposedPorts") or {} if p in bound or p not in image_ports}
    if ports:
        body["ExposedPorts"] = ports
    image_volumes = image_config.get("Volumes") or {}
    volumes = {v: {} for v in config.get("Volumes") or {} if v not in image_volumes}
    if volumes:
        body["Volumes"] = volumes
    # The engine only fills Cmd from the image when no Entrypoint was given: a user's Entrypoint
    # comes with a Cmd that is the user's too (possibly none). An empty list keeps an entrypoint
    # the user cleared from coming back from the image.
    entrypoint = config.get("Entrypoint") or []
    if entrypoint != (image_config.get("Entrypoint") or []):
        body["Entrypoint"] = entrypoint
        if entrypoint and config.get("Cmd"):
            body["Cmd"] = config["Cmd"]
    if "Cmd" not in body and config.get("Cmd") and config["Cmd"] != image_config.get("Cmd"):
        body["Cmd"] = config["Cmd"]
    return body


def _host_config(info: dict) -> dict:
    host = copy.deepcopy(info["HostConfig"])
    # Inspect shows links as "/target:/name/alias"; create wants "target:alias".
    if host.get("Links"):
        host["Links"] = [
            f"{target.lstrip('/')}:{alias.rsplit('/', 1)[-1]}"
            for target, alias in (link.split(":", 1) for link in host["Links"])
        ]
    # Anonymous volumes are reattached by the name the engine gave them: those from image VOLUMEs
    # or -v /path become extra Mounts, those from --mount type=volume without a source get it.
    volume_names = {m["Destination"]: m["Name"] for m in info.get("Mounts") or [] if m.get("Type") == "volume"}
    for mount in host.get("Mounts") or []:
        if mount.get("Type") == "volume" and not mount.get("Source") and mount.get("Target") in volume_names:
            mount["Source"] = volume_names[mount["Target"]]
    claimed = {bind.split(":")[1] for bind in host.get("Binds") or [] if ":" in bind}
    claimed |= {m.get("Target") for m in host.get("Mounts") or []}
    anonymous = [
        {"Type": "volume", "Source": m["Name"], "Target": m["Destination"], "ReadOnly": not m.get("RW", True)}
        for m in info.get("Mounts") or []
        if m.get("Type") == "volume" and m["Destination"] not in claimed
    ]
    if anonymous:
        host["Mounts"] = (host.get("Mounts") or []) + anonymous
    return host


def _endpoints(info: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """EndpointConfigs of the container's networks: ({primary: config}, {other: config, ...})."""
    mode = info["HostConfig"].get("NetworkMode") or "default"
    if mode in ("host", "none") or mode.startswith("container:"):
        return {}, {}
    primary_name = "bridge" if mode == "default" else mode
    short_id = info["Id"][:12]
    primary: dict[str, dict] = {}
    others: dict[str, dict] = {}
    for net, settings in (info["NetworkSettings"].get("Networks") or {}).items():
        endpoint = {k: settings[k] for k in ENDPOINT_KEYS if settings.get(k)}
        aliases = [a for a in endpoint.get("Aliases", []) if a != short_id]
        if aliases:
            endpoint["Aliases"] = aliases
        else:
            endpoint.pop("Aliases", None)
        is_primary = net == primary_name or (len(mode) >= 12 and settings.get("NetworkID", "").startswith(mode))
        (primary if is_primary and not primary else others)[net] = endpoint
    return primary, others
