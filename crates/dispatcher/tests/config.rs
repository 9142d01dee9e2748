//! Configuration loading: file + environment, errors naming key and source, secrets.
//! figment's Jail isolates environment variables and the working directory.
#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error

use figment::Jail;
use mesh_notify::{Config, ConfigError, Profile};
use mesh_notify_core::{Kind, Language};
use mesh_notify_gotify::GotifyConfig;

fn load(path: Option<&str>) -> Result<(Config, mesh_notify::Figment), ConfigError> {
    Config::load(path.map(std::path::Path::new))
}

#[test]
fn defaults_work_without_file_or_environment() {
    Jail::expect_with(|_jail| {
        let (config, figment) = load(None).unwrap();
        assert_eq!(config.profile, Profile::Development);
        assert_eq!(config.timeout, std::time::Duration::from_secs(5));
        assert_eq!(config.language, Language::Fr);
        assert!(config.providers.get::<GotifyConfig>().is_none());
        assert_eq!(config.routes.get(Kind::Chat), ["gotify", "log"]);
        let d = config
            .dispatcher_builder(&figment)
            .unwrap()
            .build()
            .unwrap();
        let names: Vec<String> = d.providers().iter().map(|p| p.name().to_string()).collect();
        assert_eq!(names, ["log"]);
        assert!(d.disabled().any(|n| n == "gotify"));
        Ok(())
    });
}

#[test]
fn the_repository_default_file_loads() {
    Jail::expect_with(|_jail| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/default.toml");
        let (config, figment) = load(Some(path)).unwrap();
        config
            .dispatcher_builder(&figment)
            .unwrap()
            .build()
            .unwrap();
        Ok(())
    });
}

#[test]
fn seed_variables_configure_gotify_and_numeric_tokens_stay_strings() {
    Jail::expect_with(|jail| {
        jail.set_env("GOTIFY_URL", "http://127.0.0.1:9");
        jail.set_env("GOTIFY_TOKEN", "012345");
        let (config, figment) = load(None).unwrap();
        let g = config.providers.get::<GotifyConfig>().unwrap();
        assert_eq!(g.url, "http://127.0.0.1:9");
        assert_eq!(g.token.as_ref().unwrap().expose(), "012345");
        assert!(
            !format!("{config:?}").contains("012345"),
            "Debug must redact the token"
        );
        let d = config
            .dispatcher_builder(&figment)
            .unwrap()
            .build()
            .unwrap();
        assert!(d.providers().iter().any(|p| p.name() == "gotify"));
        Ok(())
    });
}

#[test]
fn prefixed_variables_override_the_file_and_secrets_are_not_parsed() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "mesh.toml",
            r#"
            timeout = "2s"
            [providers.gotify]
            url = "https://push.example.com"
            token = "from-file"
            "#,
        )?;
        jail.set_env("MESH_NOTIFY_TIMEOUT", "7s");
        jail.set_env("MESH_NOTIFY_PROVIDERS__GOTIFY__TOKEN", "007");
        let (config, _) = load(Some("mesh.toml")).unwrap();
        assert_eq!(config.timeout, std::time::Duration::from_secs(7));
        assert_eq!(
            config
                .providers
                .get::<GotifyConfig>()
                .unwrap()
                .token
                .as_ref()
                .unwrap()
                .expose(),
            "007"
        );
        Ok(())
    });
}

#[test]
fn unknown_keys_are_rejected_naming_key_and_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "bad.toml",
            "[providers.gotify]\nurl = \"https://x\"\ntokn = \"oops\"\n",
        )?;
        let err = load(Some("bad.toml")).unwrap_err().to_string();
        assert!(err.contains("tokn"), "{err}");
        assert!(err.contains("bad.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn wrong_types_name_the_key_and_the_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("MESH_NOTIFY_RETRY__ATTEMPTS_PER_PROVIDER", "many");
        let err = load(None).unwrap_err().to_string();
        assert!(
            err.to_lowercase().contains("retry.attempts_per_provider"),
            "{err}"
        );
        assert!(err.contains("MESH_NOTIFY_"), "{err}");
        Ok(())
    });
}

#[test]
fn production_refuses_plain_http_unless_allowed() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "prod.toml",
            "profile = \"production\"\n[providers.gotify]\nurl = \"http://gotify.lan\"\n",
        )?;
        let err = load(Some("prod.toml")).unwrap_err().to_string();
        assert!(err.contains("providers.gotify.url"), "{err}");
        assert!(err.contains("prod.toml"), "{err}");
        assert!(err.contains("allow_insecure_http"), "{err}");

        jail.create_file(
            "prod2.toml",
            "profile = \"production\"\n[providers.gotify]\nurl = \"http://gotify.lan\"\nallow_insecure_http = true\n",
        )?;
        load(Some("prod2.toml")).unwrap();

        jail.set_env("MESH_NOTIFY_PROFILE", "production");
        jail.set_env("GOTIFY_URL", "http://gotify.lan");
        let err = load(None).unwrap_err().to_string();
        assert!(
            err.contains("GOTIFY_URL"),
            "the variable must be named: {err}"
        );
        Ok(())
    });
}

#[test]
fn routes_naming_unknown_providers_are_rejected() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "r.toml",
            "[routes]\nchat = [\"gotify\", \"carrier-pigeon\"]\n",
        )?;
        let err = load(Some("r.toml")).unwrap_err().to_string();
        assert!(err.contains("routes.chat"), "{err}");
        assert!(err.contains("carrier-pigeon"), "{err}");
        assert!(err.contains("r.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    Jail::expect_with(|_jail| {
        let err = load(Some("nowhere/mesh.toml")).unwrap_err().to_string();
        assert!(err.contains("nowhere/mesh.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn templates_can_be_overridden_and_are_checked() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "t.toml",
            "language = \"en\"\n[templates]\nchat_title = \"{from} → {room}\"\n",
        )?;
        let (config, _) = load(Some("t.toml")).unwrap();
        let t = config.templates();
        assert_eq!(t.chat_title, "{from} → {room}");
        assert_eq!(t.call_title, "📞 Audio/video call from {from}");

        jail.create_file("t2.toml", "[templates]\ncall_body = \"{message}\"\n")?;
        let err = load(Some("t2.toml")).unwrap_err().to_string();
        assert!(
            err.contains("templates.call_body") && err.contains("t2.toml"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn an_unreadable_token_file_names_the_path() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "f.toml",
            "[providers.gotify]\nurl = \"https://x\"\ntoken_file = \"/nonexistent/gotify.token\"\n",
        )?;
        let (config, figment) = load(Some("f.toml")).unwrap();
        let err = config
            .dispatcher_builder(&figment)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/gotify.token"), "{err}");
        assert!(err.contains("providers.gotify"), "{err}");
        Ok(())
    });
}

#[test]
fn an_unusable_outbox_file_is_a_start_up_error_naming_it() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "not-a-db.sqlite3",
            "this is not an SQLite database, just text....",
        )?;
        jail.create_file(
            "o.toml",
            "[outbox]\nbackend = \"sqlite\"\npath = \"not-a-db.sqlite3\"\n",
        )?;
        let (config, figment) = load(Some("o.toml")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = match rt.block_on(config.open_outbox(&figment)) {
            Ok(_) => panic!("a text file must not open as an outbox"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("outbox.path") && err.contains("not-a-db.sqlite3"),
            "{err}"
        );
        assert!(err.contains("o.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn redis_backend_requires_a_url() {
    Jail::expect_with(|jail| {
        jail.create_file("o.toml", "[outbox]\nbackend = \"redis\"\n")?;
        let err = load(Some("o.toml")).unwrap_err().to_string();
        assert!(err.contains("outbox.redis_url"), "{err}");
        Ok(())
    });
}

#[test]
fn a_missing_fcm_key_file_names_the_key_and_path() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "fcm.toml",
            "[providers.fcm]\nservice_account_file = \"/nonexistent/sa.json\"\n[routes]\nchat = [\"fcm\", \"log\"]\n",
        )?;
        let (config, figment) = load(Some("fcm.toml")).unwrap();
        let err = config
            .dispatcher_builder(&figment)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.fcm.service_account_file"), "{err}");
        assert!(
            err.contains("/nonexistent/sa.json") && err.contains("fcm.toml"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn every_example_file_in_config_loads() {
    Jail::expect_with(|_jail| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                if let Err(e) = Config::load(Some(&path)) {
                    panic!("{} does not load: {e}", path.display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 4, "expected the example files, found {seen}");
        Ok(())
    });
}

#[test]
fn an_unknown_provider_section_is_rejected_naming_the_known_ones_and_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file("p.toml", "[providers.pigeon]\nloft = \"roof\"\n")?;
        let err = load(Some("p.toml")).unwrap_err().to_string();
        assert!(err.contains("pigeon"), "{err}");
        assert!(err.contains("p.toml"), "{err}");
        for known in mesh_notify::known_providers() {
            assert!(err.contains(known), "{err}");
        }
        Ok(())
    });
}

#[test]
fn unknown_keys_inside_a_provider_section_name_the_full_key_and_the_variable() {
    Jail::expect_with(|jail| {
        jail.set_env(
            "MESH_NOTIFY_PROVIDERS__FCM__SERVICE_ACCOUNT_FILE",
            "/x.json",
        );
        jail.set_env("MESH_NOTIFY_PROVIDERS__FCM__CHANEL_ID", "typo");
        let err = load(None).unwrap_err().to_string();
        assert!(
            err.to_lowercase().contains("providers.fcm.chanel_id"),
            "{err}"
        );
        assert!(err.contains("MESH_NOTIFY_"), "{err}");
        Ok(())
    });
}

#[test]
fn the_registry_names_every_provider_and_secret_files_come_from_the_sections() {
    Jail::expect_with(|jail| {
        let known = mesh_notify::known_providers();
        for name in ["gotify", "fcm", "apns", "smtp", "log"] {
            assert!(known.contains(&name), "{known:?}");
        }
        jail.create_file(
            "s.toml",
            r#"
            [providers.gotify]
            url = "https://push.example.com"
            token_file = "/run/secrets/gotify"
            [providers.fcm]
            service_account_file = "/run/secrets/fcm.json"
            [providers.smtp]
            host = "smtp.example.com"
            from = "mesh@example.com"
            username = "mesh"
            password_file = "/run/secrets/smtp"
            "#,
        )?;
        let (config, _) = load(Some("s.toml")).unwrap();
        let files: Vec<String> = config
            .secret_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "/run/secrets/gotify",
                "/run/secrets/fcm.json",
                "/run/secrets/smtp"
            ]
        );
        Ok(())
    });
}

#[test]
fn provider_build_errors_name_the_key_and_its_source() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "g.toml",
            "[providers.gotify]\nurl = \"https://x\"\ntoken = \"a\"\ntoken_file = \"/t\"\n",
        )?;
        let (config, figment) = load(Some("g.toml")).unwrap();
        let err = config
            .dispatcher_builder(&figment)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("providers.gotify.token"), "{err}");
        assert!(err.contains("g.toml"), "{err}");
        Ok(())
    });
}
