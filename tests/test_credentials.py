"""
Secrets passed by systemd's LoadCredential=: the service reads them as files
in $CREDENTIALS_DIRECTORY, named in the TOML by ``password_credential`` and
``secret_credentials``.
"""

from pathlib import Path

import pytest

from p2a_connector import config
from p2a_connector.config import ConfigError

SECRET = "whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"
OTHER_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def text(bind_secret: str, webhook_secret: str = f'secrets = ["{SECRET}"]') -> str:
    return f"""
[[webhook]]
name = "app"
url = "http://127.0.0.1:8099/sms"
{webhook_secret}

[[operator]]
name = "op1"
webhook = "app"

[[operator.bind]]
host = "127.0.0.1"
port = 2775
system_id = "p2a"
{bind_secret}
"""


def load(tmp_path: Path, body: str) -> config.Config:
    path = tmp_path / "connector.toml"
    path.write_text(body)
    return config.load(path)


def error_for(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body)
    return str(info.value)


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    """A credentials directory, as systemd makes one, in the environment."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_bind_password_is_read_from_the_named_credential(tmp_path, credentials):
    (credentials / "smsc-a").write_text("s3cret\n")

    loaded = load(tmp_path, text('password_credential = "smsc-a"'))

    assert loaded.operators[0].binds[0].password == "s3cret"


def test_webhook_secrets_are_read_from_the_named_credentials(tmp_path, credentials):
    (credentials / "app-secret").write_text(OTHER_SECRET + "\n")

    loaded = load(
        tmp_path,
        text(
            'password = "secret"',
            f'secrets = ["{SECRET}"]\nsecret_credentials = ["app-secret"]',
        ),
    )

    assert loaded.webhooks[0].secrets == (SECRET, OTHER_SECRET)


def test_a_credential_without_credentials_directory_says_to_use_a_file(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)

    message = error_for(tmp_path, text('password_credential = "smsc-a"'))

    assert message.startswith("operator[0].bind[0].password_credential: ")
    assert "only available when systemd passes credentials (LoadCredential=)" in (
        message
    )
    assert "use password_file otherwise" in message


def test_a_webhook_credential_without_credentials_directory_says_to_use_a_file(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)

    message = error_for(
        tmp_path, text('password = "secret"', 'secret_credentials = ["app-secret"]')
    )

    assert message.startswith("webhook[0].secret_credentials[0]: ")
    assert "use secret_files otherwise" in message


def test_a_missing_credential_names_it_and_the_line_the_unit_needs(
    tmp_path, credentials
):
    message = error_for(tmp_path, text('password_credential = "smsc-a"'))

    assert message == (
        "operator[0].bind[0].password_credential: no credential 'smsc-a' in "
        f"$CREDENTIALS_DIRECTORY ({credentials}); add "
        "LoadCredential=smsc-a:/path/to/file to the unit"
    )


def test_a_credential_name_with_a_slash_is_refused(tmp_path, credentials):
    (credentials / "smsc-a").write_text("s3cret")

    message = error_for(tmp_path, text('password_credential = "../credentials/smsc-a"'))

    assert "is not a credential name" in message


def test_password_and_password_credential_together_are_refused(tmp_path, credentials):
    (credentials / "smsc-a").write_text("s3cret")

    message = error_for(
        tmp_path, text('password = "secret"\npassword_credential = "smsc-a"')
    )

    assert message == (
        "operator[0].bind[0].password: give one of password, password_file or "
        "password_credential, not password and password_credential"
    )


def test_a_credential_password_is_held_to_smpp_length(tmp_path, credentials):
    (credentials / "smsc-a").write_text("longer-than-8")

    message = error_for(tmp_path, text('password_credential = "smsc-a"'))

    assert message == "operator[0].bind[0].password: longer than SMPP's 8 characters"


def test_admin_token_is_read_from_the_named_credential(tmp_path, credentials):
    (credentials / "admin-token").write_text("a-long-enough-admin-token\n")

    loaded = load(
        tmp_path,
        text('password = "secret"') + '\n[admin]\ntoken_credential = "admin-token"\n',
    )

    assert loaded.admin.token == "a-long-enough-admin-token"
