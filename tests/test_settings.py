"""Settings: parsed once, every problem reported together."""

from __future__ import annotations

import pytest

from kvlink_core.errors import ConfigError
from kvlink_core.settings import DEVELOPMENT_STORAGE, Settings

BASE = {"KVLINK_DEVOPS_ORGS": "contoso, fabrikam", "KVLINK_ALLOWED_VAULTS": "kv-prod,KV-Dev"}


class TestFromEnv:
    def test_defaults(self):
        """With only the two required settings, every other setting takes its documented default."""
        settings = Settings.from_env(BASE)
        assert settings.devops_orgs == ("contoso", "fabrikam")
        assert settings.allowed_vaults == frozenset({"kv-prod", "kv-dev"})
        assert settings.mode == "apply"
        assert settings.devops_url == "https://dev.azure.com"
        assert settings.vault_url("KV-Prod") == "https://kv-prod.vault.azure.net"
        assert settings.storage.connection_string == DEVELOPMENT_STORAGE
        assert settings.devops_pat is None
        assert settings.emulator is False
        assert settings.max_removal_fraction == 0.5

    def test_all_problems_reported_at_once(self):
        """Missing and malformed settings are listed together, each naming its setting."""
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"KVLINK_MODE": "yolo", "KVLINK_VAULT_URL": "http://x", "KVLINK_EMULATOR": "maybe"})
        text = str(info.value)
        for name in (
            "KVLINK_DEVOPS_ORGS",
            "KVLINK_ALLOWED_VAULTS",
            "KVLINK_MODE",
            "KVLINK_VAULT_URL",
            "KVLINK_EMULATOR",
        ):
            assert name in text
        assert len(info.value.problems) >= 5

    def test_star_allows_any_vault(self):
        """KVLINK_ALLOWED_VAULTS=* accepts every vault name."""
        settings = Settings.from_env({**BASE, "KVLINK_ALLOWED_VAULTS": "*"})
        assert settings.vault_allowed("anything-at-all")

    def test_vault_allow_list_is_case_insensitive(self):
        """Vault names are case-insensitive in Azure, so the allow-list is too."""
        settings = Settings.from_env(BASE)
        assert settings.vault_allowed("KV-PROD")
        assert not settings.vault_allowed("kv-other")

    @pytest.mark.parametrize(
        "orgs",
        ["https://evil.example.com", "dev.azure.com/contoso", "cоntoso", "-contoso", ""],
        ids=["url", "host-path", "cyrillic-o", "leading-hyphen", "empty"],
    )
    def test_organizations_must_be_names(self, orgs):
        """An organization that looks like a URL, host or look-alike is refused."""
        with pytest.raises(ConfigError, match="KVLINK_DEVOPS_ORGS"):
            Settings.from_env({**BASE, "KVLINK_DEVOPS_ORGS": orgs})

    @pytest.mark.parametrize(
        "hosting",
        [
            {"WEBSITE_INSTANCE_ID": "abc"},  # App Service plans
            {"WEBSITE_SITE_NAME": "func-kvlink"},  # Flex and Linux Consumption set these, not the instance id
            {"WEBSITE_SKU": "FlexConsumption"},
        ],
        ids=lambda h: next(iter(h)),
    )
    def test_emulator_refused_in_azure(self, hosting):
        """KVLINK_EMULATOR=1 is refused when any variable the Functions platform sets is present, named in the error."""
        with pytest.raises(ConfigError, match="refused when running in Azure") as info:
            Settings.from_env({**BASE, "KVLINK_EMULATOR": "1", **hosting})
        assert next(iter(hosting)) in str(info.value)
        assert info.value.settings == ("KVLINK_EMULATOR",)

    def test_emulator_refusal_names_every_variable_seen(self):
        """Flex Consumption's set: all three are named, and the one it does not set is not."""
        flex = {"WEBSITE_SITE_NAME": "func-kvlink", "WEBSITE_SKU": "FlexConsumption", "CONTAINER_NAME": "c1"}
        with pytest.raises(ConfigError) as info:
            Settings.from_env({**BASE, "KVLINK_EMULATOR": "1", **flex})
        text = str(info.value)
        assert all(name in text for name in flex)
        assert "WEBSITE_INSTANCE_ID" not in text

    @pytest.mark.parametrize("value", ["", "  "])
    def test_empty_hosting_variable_is_not_azure(self, value):
        """An empty variable (a local.settings.json placeholder) does not count as hosted in Azure."""
        settings = Settings.from_env({**BASE, "KVLINK_EMULATOR": "1", "WEBSITE_SITE_NAME": value})
        assert settings.emulator and not settings.running_in_azure

    def test_hosting_variables_alone_mean_azure(self):
        """Without the emulator, the hosting variables only mark the process as running in Azure."""
        settings = Settings.from_env({**BASE, "WEBSITE_SKU": "FlexConsumption"})
        assert settings.running_in_azure and not settings.emulator

    def test_container_name_alone_does_not_refuse_the_emulator(self):
        """A dev container or container runtime sets CONTAINER_NAME alone: the stand-ins still run there.

        Flex sets WEBSITE_SITE_NAME and WEBSITE_SKU beside it (see the Flex test above), so refusing on the
        WEBSITE_* variables keeps Azure refused (reference/azure-facts.md 6.4, host source IsFlexConsumptionSku).
        """
        settings = Settings.from_env({**BASE, "KVLINK_EMULATOR": "1", "CONTAINER_NAME": "devcontainer"})
        assert settings.emulator and not settings.running_in_azure

    @pytest.mark.parametrize(("value", "level"), [(None, "WARNING"), ("info", "INFO"), (" DEBUG ", "DEBUG")])
    def test_sdk_log_level_is_a_logging_level_warning_by_default(self, value, level):
        """KVLINK_SDK_LOG_LEVEL takes a logging level name in any case; unset, the SDKs log warnings only."""
        env = {**BASE} if value is None else {**BASE, "KVLINK_SDK_LOG_LEVEL": value}
        assert Settings.from_env(env).sdk_log_level == level

    def test_sdk_log_level_names_the_levels_it_takes(self):
        """A level that is no logging level is refused, naming the setting and the levels it takes."""
        with pytest.raises(ConfigError, match=r"KVLINK_SDK_LOG_LEVEL must be one of DEBUG, INFO, WARNING") as info:
            Settings.from_env({**BASE, "KVLINK_SDK_LOG_LEVEL": "verbose"})
        assert info.value.settings == ("KVLINK_SDK_LOG_LEVEL",)

    def test_vault_template_needs_placeholder(self):
        """A vault URL template without {vault} cannot address more than one vault."""
        with pytest.raises(ConfigError, match=r"\{vault\}"):
            Settings.from_env({**BASE, "KVLINK_VAULT_URL": "https://one.vault.azure.net"})

    def test_vault_name_is_not_a_format_string(self):
        """The template is filled by plain replacement, never str.format on data."""
        settings = Settings.from_env({**BASE, "KVLINK_VAULT_URL": "https://127.0.0.1:8443/{vault}"})
        assert settings.vault_url("kv-a") == "https://127.0.0.1:8443/kv-a"

    def test_identity_based_storage(self):
        """AzureWebJobsStorage__tableServiceUri selects identity-based Table access."""
        settings = Settings.from_env(
            {**BASE, "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net/"}
        )
        assert settings.storage.connection_string is None
        assert settings.storage.table_endpoint == "https://acct.table.core.windows.net"

    def test_ca_bundle_must_exist(self, tmp_path):
        """KVLINK_CA_BUNDLE pointing nowhere is a configuration error, not a TLS error later."""
        with pytest.raises(ConfigError, match="KVLINK_CA_BUNDLE"):
            Settings.from_env({**BASE, "KVLINK_CA_BUNDLE": str(tmp_path / "missing.pem")})

    @pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
    def test_removal_fraction_range(self, value):
        """KVLINK_MAX_REMOVAL_FRACTION must be a number from 0 to 1."""
        with pytest.raises(ConfigError, match="KVLINK_MAX_REMOVAL_FRACTION"):
            Settings.from_env({**BASE, "KVLINK_MAX_REMOVAL_FRACTION": value})

    def test_settings_are_frozen(self):
        """Settings cannot be changed after parsing."""
        settings = Settings.from_env(BASE)
        with pytest.raises(AttributeError):
            settings.mode = "report"  # type: ignore[misc]
