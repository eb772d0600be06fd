//! The `loop_guard` section of a notification route.

use super::{Checker, Field, LoopGuardConfig};

const LOOP_GUARD_KEYS: &[&str] = &[
    "enabled",
    "half_life",
    "change_penalty",
    "return_penalty",
    "suppress_above",
    "reuse_below",
    "max_quarantine",
    "max_hops",
    "history",
];

impl Checker {
    /// Parses `loop_guard`; a missing section gives the defaults.
    pub(super) fn loop_guard(&mut self, field: Option<Field<'_>>) -> Option<LoopGuardConfig> {
        let defaults = LoopGuardConfig::default();
        let Some(field) = field else {
            return Some(defaults);
        };
        let fields = self.keyed(&field, LOOP_GUARD_KEYS)?;
        let enabled = self.optional_choice(
            fields.get("enabled"),
            &[("true", true), ("false", false)],
            true,
        );
        let half_life =
            self.optional_positive_duration(fields.get("half_life"), "30s", defaults.half_life);
        let change_penalty =
            self.optional_number(fields.get("change_penalty"), "1", defaults.change_penalty);
        let return_penalty =
            self.optional_number(fields.get("return_penalty"), "4", defaults.return_penalty);
        let suppress_above =
            self.optional_number(fields.get("suppress_above"), "12", defaults.suppress_above);
        let reuse_below =
            self.optional_number(fields.get("reuse_below"), "2", defaults.reuse_below);
        let max_quarantine = self.optional_positive_duration(
            fields.get("max_quarantine"),
            "15m",
            defaults.max_quarantine,
        );
        let max_hops = fields
            .get("max_hops")
            .map_or(Some(defaults.max_hops as usize), |f| self.count(&f, "10"));
        let history = fields
            .get("history")
            .map_or(Some(defaults.history), |f| self.count(&f, "4"));

        let config = LoopGuardConfig {
            enabled: enabled?,
            half_life: half_life?,
            change_penalty: change_penalty?,
            return_penalty: return_penalty?,
            suppress_above: suppress_above?,
            reuse_below: reuse_below?,
            max_quarantine: max_quarantine?,
            max_hops: u32::try_from(max_hops?).unwrap_or(u32::MAX),
            history: history?,
        };
        self.check_loop_guard(&field, &config).then_some(config)
    }

    /// Checks the relations between the settings; returns false after reporting a problem.
    fn check_loop_guard(&mut self, field: &Field<'_>, config: &LoopGuardConfig) -> bool {
        let mut valid = true;
        if config.reuse_below >= config.suppress_above {
            let message = format!(
                "`reuse_below` ({}) must be lower than `suppress_above` ({}), or a quarantined entity would never be released by decay",
                config.reuse_below, config.suppress_above
            );
            self.report_at(field, message);
            valid = false;
        }
        if !(2..=16).contains(&config.history) {
            let message = format!(
                "`history` must be between 2 and 16 recent fingerprints, got {}; 2 is the least that detects A -> B -> A",
                config.history
            );
            self.report_at(field, message);
            valid = false;
        }
        valid
    }

    /// Parses a positive decimal number such as `4` or `0.5`.
    fn optional_number(
        &mut self,
        field: Option<Field<'_>>,
        example: &str,
        default: f64,
    ) -> Option<f64> {
        let Some(field) = field else {
            return Some(default);
        };
        let expected = format!("a positive number such as `{example}`");
        let scalar = self.scalar(&field, &expected)?;
        match scalar.text.parse::<f64>() {
            Ok(number) if number.is_finite() && number > 0.0 => Some(number),
            _ => {
                let message = format!(
                    "`{}` must be {expected}, got {}",
                    field.name(),
                    scalar.message_text()
                );
                self.report_at(&field, message);
                None
            }
        }
    }
}
