#!/usr/bin/env python3
"""Turns the picket DaemonSet (the one DaemonSet of a manifest file: the Helm chart rendered)
into a `podman run` command line, so that the container test runs the image with exactly what
the manifest declares: the same args, env, security context (user, capabilities, privilege
escalation, read-only root, seccomp, AppArmor), hostPID, and every volume at its mountPath with
its readOnly flag.

What cannot be the node's own:
  - hostPath volumes outside /sys come from a fixture node directory (--node DIR): the test
    provides the runtimes' state there, and keeps the agent's state there instead of the
    machine's /var/lib/picket; kernel interfaces under /sys are the machine's;
  - the ConfigMap volume is materialized from the ConfigMap manifest the way the kubelet lays it
    out: a timestamped directory with the keys, a `..data` link to it, and one link per key
    through `..data`;
  - the pod network is a private network namespace (`--network=none`): the test reaches the
    endpoints inside it, as the kubelet's probes reach the pod's address;
  - podman here needs `--runtime runc` and explicit ulimits (see README).

Prints one argument per line (everything after `podman run`).
"""
import argparse
import base64
import os
import sys

import yaml


def fail(message):
    sys.exit(f"podman_args: {message}")


def materialize_configmap(configmap, directory):
    """The kubelet's layout of a ConfigMap volume."""
    stamp = "..2026_11_24_00_00_00.000000001"
    os.makedirs(os.path.join(directory, stamp), exist_ok=True)
    keys = {}
    for key, value in (configmap.get("data") or {}).items():
        keys[key] = value.encode()
    for key, value in (configmap.get("binaryData") or {}).items():
        keys[key] = base64.b64decode(value)
    for key, content in keys.items():
        with open(os.path.join(directory, stamp, key), "wb") as out:
            out.write(content)
    os.symlink(stamp, os.path.join(directory, "..data"))
    for key in keys:
        os.symlink(os.path.join("..data", key), os.path.join(directory, key))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daemonset", required=True)
    parser.add_argument("--configmap", required=True, action="append",
                        help="manifest of ConfigMaps used (repeatable)")
    parser.add_argument("--node", required=True, help="fixture root for non-/sys hostPaths")
    parser.add_argument("--image", required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--extra-arg", action="append", default=[])
    options = parser.parse_args()

    with open(options.daemonset) as f:
        daemonsets = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "DaemonSet"]
    if len(daemonsets) != 1:
        fail(f"expected one DaemonSet in {options.daemonset}, found {len(daemonsets)}")
    daemonset = daemonsets[0]
    configmaps = {}
    for manifest in options.configmap:
        with open(manifest) as f:
            configmaps.update({c["metadata"]["name"]: c for c in yaml.safe_load_all(f)
                               if c and c.get("kind") == "ConfigMap"})
    pod = daemonset["spec"]["template"]["spec"]
    if len(pod["containers"]) != 1:
        fail("expected one container")
    container = pod["containers"][0]

    args = []
    if pod.get("hostPID"):
        args.append("--pid=host")
    if pod.get("hostNetwork"):
        args.append("--network=host")
    else:
        args.append("--network=none")
    if pod.get("hostIPC"):
        args.append("--ipc=host")

    security = container.get("securityContext") or {}
    if "runAsUser" in security:
        args.append(f"--user={security['runAsUser']}:{security.get('runAsGroup', 0)}")
    if security.get("privileged"):
        args.append("--privileged")
    if security.get("readOnlyRootFilesystem"):
        # Kubernetes adds no writable tmpfs of its own; neither may podman.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if security.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    capabilities = security.get("capabilities") or {}
    for cap in capabilities.get("drop") or []:
        args.append(f"--cap-drop={cap.lower()}")
    for cap in capabilities.get("add") or []:
        args.append(f"--cap-add=CAP_{cap.upper()}")
    apparmor = (security.get("appArmorProfile") or {}).get("type", "RuntimeDefault")
    if apparmor == "Unconfined":
        args.append("--security-opt=apparmor=unconfined")
    elif apparmor != "RuntimeDefault":
        fail(f"AppArmor profile {apparmor} not supported by the test")
    seccomp = (security.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args.append("--security-opt=seccomp=unconfined")
    elif seccomp != "RuntimeDefault":
        fail(f"seccomp profile {seccomp} not supported by the test")

    for env in container.get("env") or []:
        if "value" in env:
            args.append(f"--env={env['name']}={env['value']}")
        elif env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            args.append(f"--env={env['name']}={options.node_name}")
        elif env.get("valueFrom", {}).get("secretKeyRef", {}).get("optional") is True:
            # An optional Secret the test cluster does not have: the variable is left unset,
            # as the kubelet leaves it.
            continue
        else:
            fail(f"env {env['name']}: only values and spec.nodeName are supported")

    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        read_only = mount.get("readOnly", False)
        if "hostPath" in volume:
            path = volume["hostPath"]["path"]
            kind = volume["hostPath"].get("type", "")
            source = path if path.startswith("/sys/") else os.path.join(options.node, path.lstrip("/"))
            if kind == "DirectoryOrCreate":
                os.makedirs(source, exist_ok=True)
            elif kind == "Directory" and not os.path.isdir(source):
                fail(f"hostPath {source} (type Directory) does not exist")
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            if name not in configmaps:
                fail(f"no ConfigMap {name} in {', '.join(options.configmap)}")
            source = os.path.join(options.node, "configmaps", name)
            materialize_configmap(configmaps[name], source)
            read_only = True  # the kubelet mounts ConfigMap volumes read-only
        else:
            fail(f"volume {mount['name']}: unsupported kind")
        options_ = ["ro" if read_only else "rw"]
        propagation = mount.get("mountPropagation")
        if propagation == "HostToContainer":
            # The kubelet's rslave: mounts made on the node later show up in the container.
            options_.append("rslave")
        elif propagation not in (None, "None"):
            fail(f"volume {mount['name']}: mountPropagation {propagation} not supported")
        args.append(f"--volume={source}:{mount['mountPath']}:{','.join(options_)}")

    args.append(options.image)
    args += container.get("command") or []
    args += container.get("args") or []
    args += options.extra_arg
    print("\n".join(args))


if __name__ == "__main__":
    main()
