//! Configuration of the processor (`[processor]` in the config file).

use serde::{Deserialize, Serialize};

/// How spans are normalised. Every field has a default; unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Attribute keys read as `customer_id` after the standard `user.id` and `enduser.id`,
    /// first match wins. Default: `["customer.id"]`.
    pub customer_id_keys: Vec<String>,
    /// Glob patterns of tool names whose calls are write actions when a span does not say so
    /// itself with `runledger.action.side_effect`. Example: `["issue_refund", "deploy_*"]`.
    pub write_tools: Vec<String>,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            customer_id_keys: vec!["customer.id".to_string()],
            write_tools: Vec::new(),
        }
    }
}

impl ProcessorConfig {
    /// Checks what serde cannot: that every glob compiles.
    pub fn validate(&self) -> Result<(), String> {
        for pattern in &self.write_tools {
            globset::Glob::new(pattern)
                .map_err(|e| format!("processor.write_tools: bad pattern `{pattern}`: {e}"))?;
        }
        Ok(())
    }
}
