//! Normalizing raw identifiers before identity resolution: phone numbers to E.164 (with a default
//! region for national formats), emails lowercased, WhatsApp `wa_id`s kept raw beside their E.164
//! form. Errors name the kind of identifier, never the value.

use ledger::identity::{Identifier, IdentifierKind};

use crate::error::ConnectorError;

/// A phone number in E.164, parsed with `default_region` (ISO 3166 alpha-2, e.g. `BR`) for numbers
/// written without a country code.
pub fn phone(raw: &str, default_region: &str) -> Result<Identifier, ConnectorError> {
    let region: Option<phonenumber::country::Id> = default_region.parse().ok();
    let trimmed = raw.trim().trim_start_matches("whatsapp:");
    // Digits only with no `+`, long enough to carry a country code (as providers send them):
    // read as international first.
    let digits_only = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
    let parsed = if digits_only && trimmed.len() > 10 {
        phonenumber::parse(None, format!("+{trimmed}")).or_else(|_| phonenumber::parse(region, trimmed))
    } else {
        phonenumber::parse(region, trimmed)
    };
    let number = parsed.map_err(|_| ConnectorError::Invalid { field: "phone number", reason: "is not a phone number".into() })?;
    if !phonenumber::is_valid(&number) {
        return Err(ConnectorError::Invalid { field: "phone number", reason: "is not a valid number for its region".into() });
    }
    Ok(Identifier { kind: IdentifierKind::Phone, value: number.format().mode(phonenumber::Mode::E164).to_string() })
}

/// An email address, trimmed and lowercased.
pub fn email(raw: &str) -> Result<Identifier, ConnectorError> {
    let value = raw.trim().to_lowercase();
    let valid = value.len() <= 254
        && value.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.starts_with('.'))
        && !value.contains(char::is_whitespace);
    if !valid {
        return Err(ConnectorError::Invalid { field: "email", reason: "is not an email address".into() });
    }
    Ok(Identifier { kind: IdentifierKind::Email, value })
}

/// A WhatsApp sender: the raw `wa_id` as the channel identity and, when it parses, its E.164 form
/// (a Brazilian `wa_id` may lack the ninth digit, so the two are kept apart).
pub fn whatsapp(wa_id: &str, default_region: &str) -> Result<Vec<Identifier>, ConnectorError> {
    if wa_id.is_empty() || wa_id.len() > 32 || !wa_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConnectorError::Invalid { field: "wa_id", reason: "must be digits".into() });
    }
    let mut ids = vec![Identifier { kind: IdentifierKind::WhatsApp, value: wa_id.to_owned() }];
    if let Ok(p) = phone(&format!("+{wa_id}"), default_region) {
        ids.push(p);
    }
    Ok(ids)
}

/// An identifier of the given kind, from an API request.
pub fn parse(kind: IdentifierKind, raw: &str, default_region: &str) -> Result<Vec<Identifier>, ConnectorError> {
    match kind {
        IdentifierKind::Phone => Ok(vec![phone(raw, default_region)?]),
        IdentifierKind::Email => Ok(vec![email(raw)?]),
        IdentifierKind::WhatsApp => whatsapp(raw, default_region),
        IdentifierKind::Slack | IdentifierKind::Teams | IdentifierKind::External => {
            let value = raw.trim();
            if value.is_empty() || value.len() > 256 || value.contains(char::is_whitespace) {
                return Err(ConnectorError::Invalid { field: "identifier", reason: "must be 1 to 256 characters without spaces".into() });
            }
            Ok(vec![Identifier { kind, value: value.to_owned() }])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_person_written_three_ways_is_one_e164_number() {
        for raw in ["+55 11 91234-5678", "5511912345678", "(11) 91234-5678"] {
            assert_eq!(phone(raw, "BR").unwrap().value, "+5511912345678", "{raw}");
        }
    }

    #[test]
    fn whatsapp_ids_keep_the_raw_form_beside_e164() {
        let ids = whatsapp("5511912345678", "BR").unwrap();
        assert_eq!(ids[0], Identifier { kind: IdentifierKind::WhatsApp, value: "5511912345678".into() });
        assert_eq!(ids[1].value, "+5511912345678");
        assert!(whatsapp("55119123x", "BR").is_err());
    }

    #[test]
    fn emails_are_lowercased_and_bad_input_is_refused_without_echo() {
        assert_eq!(email(" Ana.Silva@Example.COM ").unwrap().value, "ana.silva@example.com");
        let e = email("ana at example dot com").unwrap_err().to_string();
        assert!(!e.contains("ana at example"), "{e}");
        assert!(phone("hello", "BR").is_err());
    }
}
