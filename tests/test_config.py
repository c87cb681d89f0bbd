"""Settings precedence and validation."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, discord_token, load_settings, parse_sizes

ROOT = Path(__file__).resolve().parents[1]


def test_config_toml_documents_every_key_with_its_default():
    text = (ROOT / "config.toml").read_text()
    data = tomllib.loads(text)
    defaults = Settings()
    for section in fields(Settings):
        keys = {f.name for f in fields(getattr(defaults, section.name))}
        assert set(data[section.name]) == keys, section.name
    assert load_settings(ROOT / "config.toml", env={}) == defaults
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#") and not line.startswith("["):
            assert lines[i - 1].startswith("#") or lines[i - 1].strip() and "=" in lines[i - 1], line


def test_precedence_flag_over_env_over_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[painter]\nfps = 12\nsteps = 7\n[model]\nid = "from-file"\n')
    env = {"LATENT_PAINTER_PAINTER_FPS": "24", "LATENT_PAINTER_STORAGE_DATA_DIR": "/data"}
    s = load_settings(cfg, env=env, overrides={"painter": {"fps": 60, "steps": None}})
    assert s.painter.fps == 60
    assert s.painter.steps == 7
    assert s.model.id == "from-file"
    assert s.storage.data_dir == "/data"
    s = load_settings(cfg, env=env)
    assert s.painter.fps == 24


def test_an_empty_variable_leaves_a_number_as_the_file_has_it(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[discord]\nsync_guild = 1300000000000000100\n[painter]\nfps = 12\n")
    env = {"LATENT_PAINTER_DISCORD_SYNC_GUILD": "", "LATENT_PAINTER_PAINTER_FPS": " "}
    s = load_settings(cfg, env=env)
    assert (s.discord.sync_guild, s.painter.fps) == (1300000000000000100, 12)
    # An empty text is a value: an empty database url means SQLite in the data directory.
    assert load_settings(env={"LATENT_PAINTER_DATABASE_URL": ""}).database.url == ""


def test_every_key_settable_from_environment():
    for section in fields(Settings):
        for f in fields(getattr(Settings(), section.name)):
            name = f"LATENT_PAINTER_{section.name.upper()}_{f.name.upper()}"
            value = getattr(getattr(Settings(), section.name), f.name)
            s = load_settings(env={name: str(value)})
            assert getattr(getattr(s, section.name), f.name) == value, name


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LATENT_PAINTER_PAINTER_EFFECT": "splash"}, r"\[painter\] effect must be one of strokes"),
        ({"LATENT_PAINTER_PAINTER_FPS": "fast"}, r"\[painter\] fps must be int"),
        ({"LATENT_PAINTER_PAINTER_RELEASE": "1.5"}, r"\[painter\] release must be in 0.0..1.0"),
        ({"LATENT_PAINTER_MODEL_DTYPE": "int8"}, r"\[model\] dtype must be one of auto, float32"),
    ],
)
def test_invalid_values_name_the_key(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_keys_and_sections_in_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[painter]\nfsp = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key \[painter\] fsp"):
        load_settings(cfg, env={})
    cfg.write_text("[paint]\nfps = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[paint\]"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.toml", env={})


def test_token_only_from_environment():
    assert discord_token({"DISCORD_TOKEN": " abc "}) == "abc"
    with pytest.raises(ConfigError, match="DISCORD_TOKEN is not set"):
        discord_token({})
    assert "token" not in {f.name for f in fields(Settings().discord)}


def test_default_database_is_sqlite_under_data_dir():
    s = load_settings(env={"LATENT_PAINTER_STORAGE_DATA_DIR": "/srv/lp"})
    assert s.database_url == "sqlite+aiosqlite:////srv/lp/latent-painter.db"


@pytest.mark.parametrize(
    "name",
    [
        "LATENT_PAINTER_QUEUE_LEASE_SECONDS",
        "LATENT_PAINTER_QUEUE_HEARTBEAT_SECONDS",
        "LATENT_PAINTER_QUEUE_POLL_SECONDS",
        "LATENT_PAINTER_PAINTER_THETA",
        "LATENT_PAINTER_PAINTER_DURATION",
    ],
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_numbers_are_refused_naming_the_key(name: str, value: str) -> None:
    # NaN passes every range check and inf the open-ended ones; both failed far away.
    section, key = name.removeprefix("LATENT_PAINTER_").lower().split("_", 1)
    with pytest.raises(ConfigError, match=rf"^\[{section}\] {key} must be a finite number, got '{value}'$"):
        load_settings(env={name: value})


def test_non_finite_numbers_from_a_file_or_a_flag_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[queue]\nlease_seconds = inf\n")
    with pytest.raises(ConfigError, match=r"\[queue\] lease_seconds must be a finite number"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match=r"\[painter\] duration must be a finite number"):
        load_settings(env={}, overrides={"painter": {"duration": float("nan")}})
    with pytest.raises(ConfigError, match=r"\[painter\] fps must be int, got 'nan'"):
        load_settings(env={"LATENT_PAINTER_PAINTER_FPS": "nan"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "API_BASE",
            "ftp://discord.com/api",
            r"\[discord\] api_base must be a URL like http://HOST/… or https",
        ),
        ("API_BASE", "discord.com/api/v10", r"\[discord\] api_base .* got no scheme or host"),
        ("API_BASE", "wss://gateway.discord.gg/", r"\[discord\] api_base must be a URL like http"),
        (
            "GATEWAY_URL",
            "https://gateway.discord.gg/",
            r"\[discord\] gateway_url must be a URL like ws://HOST/…",
        ),
        ("GATEWAY_URL", "wss://", r"\[discord\] gateway_url .* got no scheme or host"),
    ],
)
def test_discord_urls_need_their_scheme_and_a_host(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={f"LATENT_PAINTER_DISCORD_{name}": value})


def test_a_refused_discord_url_does_not_echo_a_password() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"LATENT_PAINTER_DISCORD_API_BASE": "ftp://proxy:hunter2@proxy.example/api"})
    assert "hunter2" not in str(refused.value) and "ftp://proxy.example" in str(refused.value)
    proxies = {
        "LATENT_PAINTER_DISCORD_API_BASE": "http://127.0.0.1:8080/api/v10",
        "LATENT_PAINTER_DISCORD_GATEWAY_URL": "ws://[::1]:8080/",
    }
    s = load_settings(env=proxies)
    assert (s.discord.api_base, s.discord.gateway_url) == tuple(proxies.values())


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # Each was accepted here and failed only later: the paint cog did not load (and the
        # command sync took /paint off Discord), or the first job failed.
        ("DISCORD_SIZES", "512x512,1024", r"^\[discord\] sizes: '1024' must look like 512x512$"),
        ("DISCORD_SIZES", "512x500", r"^\[discord\] sizes: '512x500' must be multiples of 8"),
        ("DISCORD_SIZES", " , ", r"^\[discord\] sizes lists no size$"),
        (
            "RENDER_PAPER_COLOR",
            "notacolor",
            r"^\[render\] paper_color must be a colour #rrggbb, like #f5f0e6; got 'notacolor'$",
        ),
        ("RENDER_PAPER_COLOR", "#fff", r"^\[render\] paper_color must be a colour #rrggbb"),
        ("MODEL_DEVICE", "gpu", r"^\[model\] device must be auto, cpu, cuda, cuda:N or mps; got 'gpu'$"),
        ("MODEL_DEVICE", "cuda:x", r"^\[model\] device must be auto, cpu, cuda, cuda:N or mps"),
        ("DISCORD_SYNC_GUILD", "-1300000000000000100", r"^\[discord\] sync_guild must be in 0\.\.inf"),
    ],
)
def test_values_the_bot_reads_later_are_checked_at_load(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={f"LATENT_PAINTER_{name}": value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODEL_DEVICE", "cuda:1"),
        ("MODEL_DEVICE", "mps"),
        ("RENDER_PAPER_COLOR", "FFFFFF"),
        ("RENDER_PAPER_COLOR", "#0a0B0c"),
        ("DISCORD_SYNC_GUILD", "1300000000000000100"),
        ("DISCORD_SIZES", "64x64, 4096X4096,"),
    ],
)
def test_the_documented_forms_of_those_values_load(name: str, value: str) -> None:
    section, key = name.lower().split("_", 1)
    settings = load_settings(env={f"LATENT_PAINTER_{name}": value})
    assert str(getattr(getattr(settings, section), key)) == value


def test_parse_sizes_gives_the_sizes_in_order_each_once() -> None:
    assert parse_sizes("512x512, 512X768,768x512,,512x512") == [(512, 512), (512, 768), (768, 512)]
    for bad in ("4104x512", "56x64"):
        expected = rf"^\[discord\] sizes: '{bad}' must be multiples of 8, 64 to 4096 a side$"
        with pytest.raises(ConfigError, match=expected):
            parse_sizes(bad)
    # Discord refuses an option with more than 25 choices, and with it the whole command sync.
    many = ",".join(f"{64 + 8 * i}x64" for i in range(26))
    with pytest.raises(ConfigError, match=r"^\[discord\] sizes lists 26 sizes; Discord offers at most 25"):
        parse_sizes(many)
    assert len(parse_sizes(many.rsplit(",", 1)[0])) == 25


def test_a_bad_size_in_the_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[discord]\nsizes = "512x512,huge"\n')
    with pytest.raises(ConfigError, match=r"^\[discord\] sizes: 'huge' must look like 512x512$"):
        load_settings(cfg, env={})


def test_taesd_decoder_needs_a_taesd_id_from_any_source(tmp_path: Path) -> None:
    message = r"^\[model\] decoder = taesd needs \[model\] taesd_id"
    with pytest.raises(ConfigError, match=message):
        load_settings(env={"LATENT_PAINTER_MODEL_DECODER": "taesd"})
    with pytest.raises(ConfigError, match=message):
        load_settings(env={}, overrides={"model": {"decoder": "taesd"}})
    with pytest.raises(ConfigError, match=message):
        load_settings(env={"LATENT_PAINTER_MODEL_DECODER": "taesd", "LATENT_PAINTER_MODEL_TAESD_ID": " "})
    # The decoder from the file and its model from the environment: checked once all are read.
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\ndecoder = "taesd"\n')
    settings = load_settings(cfg, env={"LATENT_PAINTER_MODEL_TAESD_ID": "madebyollin/taesd"})
    assert (settings.model.decoder, settings.model.taesd_id) == ("taesd", "madebyollin/taesd")


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        # A misspelt variable left the model at "tiny", the random-weight test model.
        ("LATENT_PAINTER_MODEL_IDS", "LATENT_PAINTER_MODEL_ID"),
        ("LATENT_PAINTER_DATA_DIR", "LATENT_PAINTER_STORAGE_DATA_DIR"),
        ("LATENT_PAINTER_DISCORD_SIZE", "LATENT_PAINTER_DISCORD_SIZES"),
        ("LATENT_PAINTER_CONFIG_FILE", "LATENT_PAINTER_CONFIG"),
    ],
)
def test_a_misspelt_variable_is_refused_with_the_name_meant(name: str, meant: str) -> None:
    with pytest.raises(ConfigError, match=rf"^environment: unknown variable {name}; did you mean {meant}\?$"):
        load_settings(env={name: "x"})


def test_an_unknown_variable_is_refused_without_echoing_its_value() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"LATENT_PAINTER_XYZZY": "postgresql://painter:hunter2@db/painter"})
    assert str(refused.value) == (
        "environment: unknown variable LATENT_PAINTER_XYZZY; settings are "
        "LATENT_PAINTER_<SECTION>_<KEY>, e.g. LATENT_PAINTER_MODEL_ID (see config.toml)"
    )


def test_variables_that_are_not_settings_still_work(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[painter]\nfps = 12\n")
    env = {
        "LATENT_PAINTER_CONFIG": str(cfg),
        "LATENT_PAINTER_PROGRESS": "1",
        "LATENT_PAINTER_PLANNER": "numpy",
        "LATENT_PAINTER_TEST_POSTGRES_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/t",
        "LATENT_PAINTER_TEST_RUN_LOG": str(tmp_path / "runs.log"),
        "LATENT_PAINTER_PAINTER_STEPS": "7",
        "OTHER_PROGRAM_SETTING": "x",
    }
    settings = load_settings(env=env)
    assert (settings.painter.fps, settings.painter.steps) == (12, 7)
