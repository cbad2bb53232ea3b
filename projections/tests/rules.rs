//! Classification and routing by the embedded rules, as a table: intents in English, Spanish and
//! Portuguese, unprompted replies, escalation triggers, the acknowledgement's language, and queue
//! assignment over intent, customer attributes and business hours.

use std::collections::BTreeMap;

use projections::rules::{EscalationReason, Intent, Lang, Rules};

#[test]
fn messages_are_classified_in_three_languages() {
    let rules = Rules::default_rules();
    // (text, replies to one of our messages, intent, language, escalation)
    let cases: &[(&str, bool, Intent, Lang, Option<EscalationReason>)] = &[
        ("My order never arrived and I want a refund", false, Intent::Complaint, Lang::En, None),
        ("Mi pedido nunca llegó, quiero un reembolso", false, Intent::Complaint, Lang::Es, None),
        ("Meu pedido nunca chegou, quero reembolso!", false, Intent::Complaint, Lang::Pt, None),
        ("Can I book an appointment for Tuesday?", false, Intent::OrderOrBooking, Lang::En, None),
        ("Quisiera reservar una mesa para cuatro", false, Intent::OrderOrBooking, Lang::Es, None),
        ("Quero agendar uma consulta amanhã", false, Intent::OrderOrBooking, Lang::Pt, None),
        ("The app is not working, I need help", false, Intent::SupportInquiry, Lang::En, None),
        ("La aplicación no funciona, necesito ayuda", false, Intent::SupportInquiry, Lang::Es, None),
        ("O aplicativo não funciona, preciso de ajuda", false, Intent::SupportInquiry, Lang::Pt, None),
        ("How much is the premium plan?", false, Intent::InformationRequest, Lang::En, None),
        ("¿Cuánto cuesta el envío? ¿Cuál es el horario?", false, Intent::InformationRequest, Lang::Es, None),
        ("Qual o horário de funcionamento e o endereço?", false, Intent::InformationRequest, Lang::Pt, None),
        ("Thanks, see you then 👍", true, Intent::UnpromptedReply, Lang::En, None),
        ("Obrigado!", true, Intent::UnpromptedReply, Lang::Pt, None),
        // A reply that asks for something is classified by what it asks.
        ("yes, please book it", true, Intent::OrderOrBooking, Lang::En, None),
        // Nothing recognisable, not a reply: the default intent.
        ("asdf", false, Intent::SupportInquiry, Lang::En, None),
        ("I will talk to my lawyer about this complaint", false, Intent::Complaint, Lang::En, Some(EscalationReason::Keyword)),
        ("Quiero hablar con una persona real", false, Intent::SupportInquiry, Lang::Es, Some(EscalationReason::HumanRequest)),
        ("Quero falar com um atendente", false, Intent::SupportInquiry, Lang::Pt, Some(EscalationReason::HumanRequest)),
        ("Vou registrar no Procon", false, Intent::SupportInquiry, Lang::Pt, Some(EscalationReason::Keyword)),
    ];
    for (text, reply, intent, lang, escalation) in cases {
        let a = rules.assess(text, *reply);
        assert_eq!((a.intent, a.lang, a.escalation), (*intent, *lang, *escalation), "{text:?}");
    }
    assert!(rules.assess("this is terrible, the worst service", false).negative);
    assert!(rules.assess("que serviço péssimo", false).negative);
    assert!(!rules.assess("thank you so much", false).negative);
    assert!(rules.acknowledgement(Lang::Pt).unwrap().starts_with("Obrigado"));
}

#[test]
fn queues_follow_intent_attributes_and_business_hours() {
    let rules = Rules::default_rules();
    let none = BTreeMap::new();
    let vip: BTreeMap<String, String> = [("vip".to_owned(), "true".to_owned())].into();
    // Monday 2026-11-23 10:00 UTC, inside; Sunday 2026-11-22 10:00 UTC and Monday 20:00, outside.
    let (monday_10, sunday_10, monday_20) = (1_795_428_000_000, 1_795_341_600_000, 1_795_464_000_000);
    assert!(rules.in_business_hours(monday_10));
    assert!(!rules.in_business_hours(sunday_10));
    assert!(!rules.in_business_hours(monday_20));
    let table = [
        (Intent::Complaint, &none, monday_10, "complaints"),
        (Intent::Complaint, &vip, monday_10, "vip"),
        (Intent::SupportInquiry, &none, monday_10, "support"),
        (Intent::SupportInquiry, &none, sunday_10, "after_hours"),
        (Intent::SupportInquiry, &none, monday_20, "after_hours"),
        (Intent::OrderOrBooking, &none, sunday_10, "sales"),
        (Intent::InformationRequest, &none, monday_10, "automation"),
        (Intent::UnpromptedReply, &vip, monday_10, "vip"),
    ];
    for (intent, attrs, at, queue) in table {
        assert_eq!(rules.queue(intent, "whatsapp", attrs, at), queue, "{intent:?} {attrs:?} {at}");
    }
    assert!(rules.needs_human(Intent::Complaint) && !rules.needs_human(Intent::InformationRequest));
}

#[test]
fn bad_rules_are_refused_with_the_reason() {
    let broken = projections::rules::DEFAULT_RULES.replace("open = \"09:00\"", "open = \"9am\"");
    assert!(Rules::parse(&broken).unwrap_err().contains("business_hours.open"));
    let missing = projections::rules::DEFAULT_RULES.replacen("name = \"complaint\"", "name = \"support_inquiry\"", 1);
    assert!(Rules::parse(&missing).unwrap_err().contains("complaint"));
}
