//! The configuration loader must reject any input with an error, never
//! panic, and whatever it accepts must print back to TOML it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = eddy::Config::from_toml(text, "fuzz.toml") {
        let printed = config.to_toml();
        let again =
            eddy::Config::from_toml(&printed, "printed.toml").expect("printed config parses");
        assert_eq!(again, config);
    }
    let _ = eddy::config::parse_duration(text);
    let _ = eddy::config::parse_size(text);
    let _ = eddy::config::Cidr::parse(text);
    let _ = eddy::config::HostPattern::parse(text);
    let _ = eddy::config::OriginUrl::parse(text);
});
