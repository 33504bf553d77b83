"""The operator's commands for teams, users and keys: `flowengine teams|users|keys|token`.

They work on the engine's database directly (the same settings as `serve`: `--config`,
`--data-dir`), also while the engine runs: nothing about credentials is cached, so a key made or
revoked here counts at the engine's next request.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from flowengine.config import Config, ensure_secret, load_config
from flowengine.core.ids import uuid7
from flowengine.identity.directory import Directory
from flowengine.persistence import open_database


def add_parsers(sub: argparse._SubParsersAction) -> None:
    teams = sub.add_parser("teams", help="teams: who owns runs, tasks, keys").add_subparsers(
        dest="action", required=True
    )
    _command(teams.add_parser("create", help="make a team; prints its id"), _team_create).add_argument("name")
    _command(teams.add_parser("list", help="every team: id and name"), _team_list)

    users = sub.add_parser("users", help="users: members of teams").add_subparsers(dest="action", required=True)
    add = _command(users.add_parser("add", help="make a user (on first use) a member of a team; prints its id"),
                   _user_add)  # fmt: skip
    add.add_argument("email")
    add.add_argument("--team", required=True, help="the team's name")
    add.add_argument("--role", choices=["member", "admin"], default="member")

    keys = sub.add_parser("keys", help="API keys: sk- (integration), dk- (device), ak- (agent)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = _command(actions.add_parser("create", help="make a key; prints only the key, shown this once"),
                      _key_create)  # fmt: skip
    create.add_argument("--team", required=True, help="the team's name")
    create.add_argument("--kind", required=True, choices=["integration", "device", "agent"])
    create.add_argument("--name", default="", help="what it is for (shown in listings)")
    create.add_argument("--expires-days", type=int, help="1-365; default: it does not expire")
    create.add_argument("--user", help="a device key's user (email)")
    listing = _command(actions.add_parser("list", help="keys: id, kind, team, name, prefix, state"), _key_list)
    listing.add_argument("--team", help="only this team's")
    listing.add_argument("--kind", choices=["integration", "device", "agent"])
    _command(actions.add_parser("revoke", help="revoke a key at once (a device key's agent key too)"),
             _key_revoke).add_argument("id")  # fmt: skip

    token = _command(sub.add_parser("token", help="a user's session token (JWT), for the APIs"), _token)
    token.add_argument("--user", required=True, help="the user's email")
    token.add_argument("--ttl", type=float, help="seconds it lives (default: the session_ttl setting)")


def _command(parser: argparse.ArgumentParser, action: Callable[[Directory, argparse.Namespace, Config],
             Awaitable[None]]) -> argparse.ArgumentParser:  # fmt: skip
    parser.add_argument("--config", type=Path, help="YAML settings file (see config.yaml)")
    parser.add_argument("--data-dir", help="the engine's data dir (default ./data)")
    parser.set_defaults(run=lambda args: _with_directory(args, action))
    return parser


def _with_directory(args: argparse.Namespace, action: Callable[..., Awaitable[None]]) -> int:
    config = load_config(args.config, data_dir=args.data_dir)

    async def go() -> None:
        config.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)  # as `serve` would make it
        db = open_database(config)
        try:
            await action(Directory(db, ensure_secret(config, "jwt_secret"), time.time, uuid7), args, config)
        finally:
            await db.close()

    asyncio.run(go())
    return 0


async def _team_create(directory: Directory, args: argparse.Namespace, config: Config) -> None:
    print((await directory.create_team(args.name)).id)


async def _team_list(directory: Directory, args: argparse.Namespace, config: Config) -> None:
    for team in await directory.db.teams():
        print(f"{team.id}  {team.name}")


async def _user_add(directory: Directory, args: argparse.Namespace, config: Config) -> None:
    print((await directory.add_user(args.email, args.team, args.role)).id)


async def _key_create(directory: Directory, args: argparse.Namespace, config: Config) -> None:
    team = await directory.team_named(args.team)
    user = (await directory.user_by_email(args.user)).id if args.user else None
    _, raw = await directory.create_key(team.id, args.kind, args.name, user=user, expires_in_days=args.expires_days)
    print(raw)


async def _key_list(directory: Directory, args: argparse.Namespace, config: Config) -> None:
    team = (await directory.team_named(args.team)).id if args.team else None
    names = {t.id: t.name for t in await directory.db.teams()}
    offset, now = 0, directory.clock()
    while page := await directory.db.credentials(team, args.kind, 500, offset):
        for c in page:
            team_name = names.get(c.team, c.team)
            print(f"{c.id}  {c.kind:<11}  {team_name}  {c.key_prefix}...  {c.status(now)}  {c.display_name}")
        offset += len(page)


async def _key_revoke(directory: Directory, args: argparse.Namespace, config: Config) -> None:
    revoked = await directory.revoke(args.id)
    print(f"revoked {revoked.id} ({revoked.key_prefix}...)" + (" and its agent key" if revoked.paired_with else ""))


async def _token(directory: Directory, args: argparse.Namespace, config: Config) -> None:
    user = await directory.user_by_email(args.user)
    print(directory.session_token(user, args.ttl or config.session_ttl))
