"""``strata``: the command line for teams, a thin client of the REST API.

    STRATA_URL=http://127.0.0.1:8000 STRATA_TOKEN=strata_... strata env list

Exit status: 0 on success, 1 when a watched job failed or was cancelled,
2 for a usage or API error (the API's message, naming the field, is shown).
"""

import argparse
import json
import os
import sys
import time

import requests

from cloud.interfaces.cli_push import add_push_command
from cloud.interfaces.cli_sessions import SessionRefused, run_session
from cloud.interfaces.healthspec import parse_health

FINISHED = {"succeeded", "failed", "cancelled"}
BAR_WIDTH = 30


class ApiError(Exception):
    pass


class Client:
    def __init__(self, url: str, token: str, team: str | None):
        self.url, self.token = url, token
        self.base = url.rstrip("/") + "/api/v1/"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.team = team or self._only_team()

    def request(self, method: str, path: str, **kwargs) -> dict:
        url = path if path.startswith("http") else self.base + path
        try:
            response = self.session.request(method, url, timeout=30, **kwargs)
        except requests.RequestException as exc:
            raise ApiError(f"cannot reach {self.base}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:200]}
        if response.status_code >= 400:
            raise ApiError(f"{response.status_code}: {format_error(body)}")
        return body

    def team_path(self, path: str) -> str:
        return f"teams/{self.team}/{path}"

    def _only_team(self) -> str:
        teams = self.request("GET", "teams/")["results"]
        if len(teams) != 1:
            names = ", ".join(t["name"] for t in teams) or "none"
            raise ApiError(f"you are in several teams ({names}): set STRATA_TEAM or --team")
        return teams[0]["name"]

    def find_environment(self, name: str) -> dict:
        found = self.request("GET", self.team_path("environments/"), params={"name": name})
        if not found["results"]:
            raise ApiError(f"no environment named {name!r} in team {self.team}")
        return found["results"][0]

    def find_vm(self, name: str) -> dict:
        """A VM by its name, or ``ENV/VM`` when names repeat across environments."""
        env, _, vm = name.rpartition("/")
        params = {"name": vm, **({"environment": env} if env else {})}
        found = self.request("GET", self.team_path("vms/"), params=params)["results"]
        if not found:
            raise ApiError(f"no VM named {name!r} in team {self.team}")
        if len(found) > 1:
            where = ", ".join(f"{v['environment']}/{v['name']}" for v in found)
            raise ApiError(f"several VMs are named {vm!r} ({where}): say ENV/VM")
        return found[0]

    def open_session(self, path: str, request: dict, *, stdin: bool, tty: bool) -> int:
        try:
            return run_session(self.url, self.token, path, request, stdin=stdin, tty_mode=tty)
        except (SessionRefused, OSError) as exc:
            raise ApiError(str(exc)) from exc


def format_error(body) -> str:
    if isinstance(body, dict):
        return "; ".join(
            f"{field}: {' '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}"
            for field, msgs in body.items()
        )
    return str(body)


def progress_line(job: dict) -> str:
    done = BAR_WIDTH * job["progress"] // 100
    running = next((s["name"] for s in job.get("steps", []) if s["state"] == "running"), "")
    bar = "#" * done + "-" * (BAR_WIDTH - done)
    return f"[{bar}] {job['progress']:3d}% {job['state']:<9} {job['kind']} {running}".rstrip()


def watch(client: Client, job_url: str, interval: float, out=sys.stdout) -> int:
    interactive = out.isatty()
    last = ""
    while True:
        job = client.request("GET", job_url)
        if job["children"]:
            # A parent has no steps of its own: show the ones its children run.
            kids = [client.request("GET", url) for url in job["children"]]
            job["steps"] = [s for k in kids for s in k["steps"]]
        line = progress_line(job)
        if interactive:
            out.write("\r" + line.ljust(len(last)))
        elif line != last:
            out.write(line + "\n")
        out.flush()
        last = line
        if job["state"] in FINISHED:
            if interactive:
                out.write("\n")
            if job["state"] != "succeeded":
                out.write(f"job {job['state']}: {job['error']}\n")
            return 0 if job["state"] == "succeeded" else 1
        time.sleep(interval)


def print_table(rows: list[dict], columns: list[str], out=sys.stdout) -> None:
    cells = [["-" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    out.write(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n"
    )
    for line in cells:
        out.write(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        )


def emit(args, rows: list[dict], columns: list[str], out=sys.stdout) -> int:
    """A table for people, or with --json the API's rows for scripts."""
    if getattr(args, "json", False):
        json.dump(rows, out, indent=2, default=str)
        out.write("\n")
    else:
        print_table(rows, columns, out)
    return 0


def job_started(client: Client, job: dict, args) -> int:
    print(f"job {job['id']} {job['state']}: {job['url']}")
    return watch(client, job["url"], args.interval) if args.wait else 0


def cmd_env_list(client, args):
    envs = client.request(
        "GET", client.team_path("environments/"), params={"kind": args.kind} if args.kind else {}
    )["results"]
    for env in envs:
        env["states"] = ",".join(f"{k}:{v}" for k, v in env["vm_states"].items())
        env["busy"] = "yes" if env["busy_with"] else ""
    return emit(args, envs, ["name", "kind", "vm_count", "states", "busy"])


def service_rows(services: list[dict]) -> list[dict]:
    """One row per service: its current release, replicas running and healthy
    out of those wanted, and where its published ports answer."""
    rows = []
    for service in services:
        release = service["current_release"] or {}
        running = [c for c in service["containers"] if c["state"] == "running"]
        healthy = [c for c in running if c["health"] in ("healthy", "none")]
        rows.append(
            {
                "service": service["name"],
                "release": f"v{release['version']}" if release else "-",
                "digest": (release.get("digest") or "-")[:19],
                "replicas": f"{len(healthy)}/{len(running)}/{service['replicas']}",
                "health": ",".join(sorted({c["health"] for c in running})) or "-",
                "published": " ".join(service["published"]) or "-",
                "image": service["image"],
            }
        )
    return rows


SERVICE_COLUMNS = ["service", "release", "digest", "replicas", "health", "published", "image"]


def cmd_env_show(client, args):
    env = client.find_environment(args.name)
    vms = client.request("GET", client.team_path("vms/"), params={"environment": args.name})
    services = client.request("GET", f"{env['url']}services/")
    if args.json:
        return emit(args, [{**env, "vms": vms["results"], "services": services}], [])
    print(
        f"{env['name']} ({env['kind']})"
        + (f", segment {env['subnet']}" if env["subnet"] else "")
        + (f", busy: {env['busy_with']}" if env["busy_with"] else "")
    )
    print_table(vms["results"], ["name", "state", "host", "flavor", "ssh_port", "segment_ip"])
    print()
    if services:
        print("replicas: healthy/running/wanted")
        print_table(service_rows(services), SERVICE_COLUMNS)
    else:
        print("no services: `strata deploy` one")
    return 0


def cmd_services(client, args):
    env = client.find_environment(args.env)
    services = client.request("GET", f"{env['url']}services/")
    if args.json:
        return emit(args, services, [])
    return emit(args, service_rows(services), SERVICE_COLUMNS)


def cmd_releases(client, args):
    client.find_environment(args.env)  # an unknown name is an error, not an empty list
    params = {"environment": args.env, **({"service": args.service} if args.service else {})}
    releases = client.request("GET", client.team_path("releases/"), params=params)["results"]
    for release in releases:
        release["now"] = "*" if release["current"] else ""
        release["digest_short"] = release["digest"][:19]
        release["from"] = release["promoted_from"] or ""
    columns = ["now", "service", "version", "image", "digest_short", "from", "created_by"]
    return emit(args, releases, columns + ["created_at"])


def cmd_images(client, args):
    if args.vm:
        images = client.request("GET", "images/")["results"]
        return emit(args, images, ["name", "os", "format", "virtual_size_bytes", "source"])
    images = client.request("GET", client.team_path("images/"))["results"]
    for image in images:
        image["tag_list"] = ",".join(image["tags"]) or "-"
        image["digest_short"] = image["digest"][:19]
        pinning = [f"{r['environment']}/{r['service']} v{r['version']}" for r in image["releases"]]
        image["used_by"] = ",".join(pinning) or "-"
    columns = [
        "repository",
        "tag_list",
        "digest_short",
        "size",
        "used_by",
        "pushed_by",
        "pushed_at",
    ]
    return emit(args, images, columns)


def cmd_env_create(client, args):
    body = {
        "name": args.name,
        "kind": args.kind,
        "vm_count": args.vms,
        "flavor": args.flavor,
        "image": args.image,
        "egress": args.egress,
    }
    return job_started(
        client, client.request("POST", client.team_path("environments/"), json=body), args
    )


def cmd_env_destroy(client, args):
    env = client.find_environment(args.name)
    if not args.yes:
        raise ApiError(f"destroying {args.name} deletes its VMs and disks: add --yes to confirm")
    return job_started(client, client.request("DELETE", env["url"]), args)


def health_or_usage_error(text: str | None) -> dict:
    try:
        return parse_health(text)
    except ValueError as exc:
        raise ApiError(f"--health: {exc}") from exc


def env_operation(client, args, operation: str, body: dict) -> int:
    env = client.find_environment(args.env)
    return job_started(client, client.request("POST", f"{env['url']}{operation}/", json=body), args)


def cmd_deploy(client, args):
    """Only the options given are sent: the service keeps its other settings."""
    body = {"service_name": args.service, "image": args.image}
    given = {
        "replicas": args.replicas,
        "ports": args.port,
        "env": args.env_var and dict(item.partition("=")[::2] for item in args.env_var),
        "secret_env": args.secret_env
        and dict(item.partition("=")[::2] for item in args.secret_env),
        "volumes": args.volume,
        "command": args.command,
    }
    body.update((key, value) for key, value in given.items() if value is not None)
    if args.health is not None:  # --health "" removes the check
        body["healthcheck"] = health_or_usage_error(args.health)
    return env_operation(client, args, "deploy", body)


def cmd_promote(client, args):
    body = {"service_name": args.service, **({"target_env": args.to} if args.to else {})}
    return env_operation(client, args, "promote", body)


def cmd_scale(client, args):
    return env_operation(
        client, args, "scale", {"service_name": args.service, "replicas": args.replicas}
    )


def cmd_rollback(client, args):
    return env_operation(client, args, "rollback", {"service_name": args.service})


def cmd_ssh(client, args):
    vm = client.find_vm(args.vm)
    interactive = not args.command  # a login shell, as ssh gives one
    request = {"command": args.command, "tty": args.tty or interactive}
    path = f"ws/teams/{client.team}/vms/{vm['id']}/ssh/"
    return client.open_session(
        path, request, stdin=args.interactive or interactive, tty=request["tty"]
    )


def service_path(client, env_name: str, service: str, what: str) -> str:
    env = client.find_environment(env_name)
    return f"ws/teams/{client.team}/environments/{env['id']}/services/{service}/{what}/"


def cmd_exec(client, args):
    if not args.command:
        raise ApiError("exec: name the command after --, e.g. strata exec dev web -- ls /")
    request = {"command": args.command, "tty": args.tty, "replica": args.replica}
    path = service_path(client, args.env, args.service, "exec")
    return client.open_session(path, request, stdin=args.interactive, tty=args.tty)


def cmd_logs(client, args):
    request = {"tail": args.tail, "follow": args.follow}
    path = service_path(client, args.env, args.service, "logs")
    return client.open_session(path, request, stdin=False, tty=False)


def secret_scope(args) -> dict:
    """The scope a secret command names: --scope KIND or --env ENVIRONMENT."""
    return {k: v for k, v in {"scope": args.scope, "environment": args.env}.items() if v}


def cmd_secret_set(client, args):
    # From stdin, never the command line: argv lands in shell history and `ps`.
    value = sys.stdin.read().rstrip("\n")
    body = {"name": args.name, "value": value, **secret_scope(args)}
    client.request("POST", client.team_path("secrets/"), json=body)
    print(f"secret {args.name} set")
    return 0


def cmd_secret_list(client, args):
    listed = client.request("GET", client.team_path("secrets/"), params=secret_scope(args))
    for secret in listed["results"]:
        secret["environment"] = secret["environment"] or ""
    return emit(args, listed["results"], ["name", "scope", "environment", "created_at"])


def cmd_secret_rm(client, args):
    client.request("DELETE", client.team_path(f"secrets/{args.name}/"), params=secret_scope(args))
    print(f"secret {args.name} removed")
    return 0


def cmd_registry_add(client, args):
    # The password from stdin, never the command line: argv lands in shell history and `ps`.
    password = sys.stdin.read().rstrip("\n")
    body = {"host": args.host, "username": args.username, "password": password}
    client.request("POST", client.team_path("registries/"), json=body)
    print(f"registry {args.host} registered: deploy {args.host}/REPOSITORY:TAG")
    return 0


def cmd_registry_list(client, args):
    listed = client.request("GET", client.team_path("registries/"))["results"]
    return emit(args, listed, ["host", "username", "added_by", "created_at"])


def cmd_registry_rm(client, args):
    listed = client.request("GET", client.team_path("registries/"))["results"]
    found = [r for r in listed if r["host"] == args.host.lower()]
    if not found:
        raise ApiError(f"host: the team has no registry {args.host}")
    client.request("DELETE", client.team_path(f"registries/{found[0]['id']}/"))
    print(f"registry {args.host} removed")
    return 0


def cmd_jobs_list(client, args):
    params = {k: v for k, v in {"state": args.state, "top_level": "true"}.items() if v}
    jobs = client.request("GET", client.team_path("jobs/"), params=params)["results"]
    for job in jobs:
        job["env"] = job["environment"] or ""
    return emit(args, jobs, ["id", "kind", "env", "state", "progress", "created_at"])


def cmd_jobs_watch(client, args):
    return watch(client, client.team_path(f"jobs/{args.job}/"), args.interval)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strata", description="Strata from the command line.")
    p.add_argument("--team", default=os.environ.get("STRATA_TEAM"), help="team name (STRATA_TEAM)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between job polls")
    groups = p.add_subparsers(dest="group", required=True)
    # Every command that lists something gets --json.
    lists: list[argparse.ArgumentParser] = []
    _add_env_commands(groups, lists)
    _add_listing_commands(groups, lists)
    _add_release_commands(groups)
    _add_secret_commands(groups, lists)
    _add_registry_commands(groups, lists)
    _add_job_commands(groups, lists)
    _add_session_commands(groups)
    add_push_command(groups)
    for command in lists:
        command.add_argument("--json", action="store_true", help="the API's rows, as JSON")
    return p


def _add_env_commands(groups, lists: list) -> None:
    env = groups.add_parser("env", help="environments").add_subparsers(
        dest="command", required=True
    )
    listing = env.add_parser("list")
    listing.add_argument("--kind", choices=["dev", "staging", "prod"])
    listing.set_defaults(run=cmd_env_list)
    show = env.add_parser("show", help="VMs, services, releases and where they answer")
    show.add_argument("name")
    show.set_defaults(run=cmd_env_show)
    lists.extend([listing, show])
    create = env.add_parser("create")
    create.add_argument("name")
    create.add_argument("--kind", required=True, choices=["dev", "staging", "prod"])
    create.add_argument("--vms", type=int, default=1)
    create.add_argument("--flavor", default="small")
    create.add_argument("--image", default="debian-12")
    create.add_argument(
        "--egress",
        choices=["isolated", "nat", "route"],
        default="isolated",
        help="traffic beyond the environment's segment: none (isolated, the default), nat or route",
    )
    create.add_argument("--wait", action="store_true", help="watch the job until it ends")
    create.set_defaults(run=cmd_env_create)
    destroy = env.add_parser("destroy")
    destroy.add_argument("name")
    destroy.add_argument("--yes", action="store_true")
    destroy.add_argument("--wait", action="store_true")
    destroy.set_defaults(run=cmd_env_destroy)


def _add_listing_commands(groups, lists: list) -> None:
    services = groups.add_parser("services", help="an environment's services and their health")
    services.add_argument("env")
    services.set_defaults(run=cmd_services)
    releases = groups.add_parser("releases", help="an environment's releases, newest first")
    releases.add_argument("env")
    releases.add_argument("service", nargs="?")
    releases.set_defaults(run=cmd_releases)
    images = groups.add_parser("images", help="the team's container images")
    images.add_argument("--vm", action="store_true", help="the VM base images instead")
    images.set_defaults(run=cmd_images)
    lists.extend([services, releases, images])


def _add_release_commands(groups) -> None:
    deploy = groups.add_parser("deploy", help="deploy a release of a service")
    deploy.add_argument("env")
    deploy.add_argument("service")
    deploy.add_argument("image")
    deploy.add_argument("--replicas", type=int, help="default: as now (1 for a new service)")
    deploy.add_argument("--port", type=int, action="append", help="publish a port")
    deploy.add_argument("--env", dest="env_var", action="append", metavar="NAME=VALUE")
    deploy.add_argument("--volume", action="append", metavar="NAME:/PATH", help="a named volume")
    deploy.add_argument(
        "--secret-env",
        action="append",
        metavar="NAME=SECRET",
        help="set NAME from the team's secret SECRET",
    )
    deploy.add_argument("--health", help="http:/path:PORT, tcp:PORT or cmd:ARG,ARG")
    deploy.add_argument("--command", nargs="+", help="the container's command")
    deploy.set_defaults(run=cmd_deploy)
    promote = groups.add_parser("promote", help="deploy the same release to the next stage")
    promote.add_argument("env")
    promote.add_argument("service")
    promote.add_argument("--to", help="the target environment, if the next stage has several")
    promote.set_defaults(run=cmd_promote)
    scale = groups.add_parser("scale", help="change the number of replicas")
    scale.add_argument("env")
    scale.add_argument("service")
    scale.add_argument("replicas", type=int)
    scale.set_defaults(run=cmd_scale)
    rollback = groups.add_parser("rollback", help="go back to the previous release")
    rollback.add_argument("env")
    rollback.add_argument("service")
    rollback.set_defaults(run=cmd_rollback)
    for operation in (deploy, promote, scale, rollback):
        operation.add_argument("--wait", action="store_true", help="watch the job until it ends")


def _add_secret_commands(groups, lists: list) -> None:
    secret = groups.add_parser("secret", help="the team's secrets").add_subparsers(
        dest="command", required=True
    )
    secret_set = secret.add_parser("set", help="set NAME to the text on standard input")
    secret_list = secret.add_parser("list")
    secret_rm = secret.add_parser("rm")
    for command, run in ((secret_set, cmd_secret_set), (secret_rm, cmd_secret_rm)):
        command.add_argument("name")
        command.set_defaults(run=run)
    secret_list.set_defaults(run=cmd_secret_list)
    lists.append(secret_list)
    for command in (secret_set, secret_list, secret_rm):
        where = command.add_mutually_exclusive_group(required=command is not secret_list)
        where.add_argument(
            "--scope", choices=["dev", "staging", "prod"], help="every environment of this kind"
        )
        where.add_argument("--env", help="one environment (its own value wins over its kind's)")


def _add_registry_commands(groups, lists: list) -> None:
    registry = groups.add_parser(
        "registry", help="outside registries the team deploys from"
    ).add_subparsers(dest="command", required=True)
    add = registry.add_parser("add", help="register HOST; the password or token on standard input")
    add.add_argument("host", help="host[:port] as image references name it, e.g. ghcr.io")
    add.add_argument("--username", required=True)
    add.set_defaults(run=cmd_registry_add)
    listing = registry.add_parser("list")
    listing.set_defaults(run=cmd_registry_list)
    lists.append(listing)
    remove = registry.add_parser("rm", help="forget HOST and its login")
    remove.add_argument("host")
    remove.set_defaults(run=cmd_registry_rm)


def _add_job_commands(groups, lists: list) -> None:
    jobs = groups.add_parser("jobs", help="jobs").add_subparsers(dest="command", required=True)
    jobs_list = jobs.add_parser("list")
    jobs_list.add_argument(
        "--state", choices=["queued", "running", "succeeded", "failed", "cancelled"]
    )
    jobs_list.set_defaults(run=cmd_jobs_list)
    lists.append(jobs_list)
    jobs_watch = jobs.add_parser("watch")
    jobs_watch.add_argument("job")
    jobs_watch.set_defaults(run=cmd_jobs_watch)


def _add_session_commands(groups) -> None:
    ssh = groups.add_parser("ssh", help="a shell or a command in a VM, through the manager")
    ssh.add_argument("vm", help="VM name, or ENV/VM")
    ssh.set_defaults(run=cmd_ssh)
    exec_ = groups.add_parser("exec", help="run a command in one replica's container")
    exec_.add_argument("env")
    exec_.add_argument("service")
    exec_.add_argument("--replica", type=int, default=1, help="which replica (default 1)")
    exec_.set_defaults(run=cmd_exec)
    for command in (ssh, exec_):
        command.add_argument("-i", "--interactive", action="store_true", help="send stdin")
        command.add_argument("-t", "--tty", action="store_true", help="a terminal (pty)")
        command.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    logs = groups.add_parser("logs", help="the logs of every replica, prefixed by replica")
    logs.add_argument("env")
    logs.add_argument("service")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=100, help="lines from the end (default 100)")
    logs.set_defaults(run=cmd_logs)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "command", None) and isinstance(args.command, list):
        args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    url, token = os.environ.get("STRATA_URL"), os.environ.get("STRATA_TOKEN")
    if not url or not token:
        print(
            "strata: set STRATA_URL and STRATA_TOKEN (make a token in the portal)", file=sys.stderr
        )
        return 2
    try:
        return args.run(Client(url, token, args.team), args)
    except ApiError as exc:
        print(f"strata: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
