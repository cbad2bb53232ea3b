//! Routing rules from a TOML file (`config/routing.toml` is embedded as the default): intent
//! keywords per language, queues over intent, channel, customer attributes and business hours,
//! escalation triggers and the acknowledgement text. Pure functions of a message and its
//! conversation, so routing decisions are table-testable; the router writes each decision to the
//! log as an event, and the views fold those events, so changing the rules never changes a rebuild.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The default rules.
pub const DEFAULT_RULES: &str = include_str!("../../config/routing.toml");

/// What a customer wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Something is wrong and they want help.
    SupportInquiry,
    /// They want to buy or book.
    OrderOrBooking,
    /// They want to know something.
    InformationRequest,
    /// They are unhappy.
    Complaint,
    /// A reply to one of our own messages that asks for nothing else.
    UnpromptedReply,
}

impl Intent {
    /// The intent's name, as in the rules and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::SupportInquiry => "support_inquiry",
            Intent::OrderOrBooking => "order_or_booking",
            Intent::InformationRequest => "information_request",
            Intent::Complaint => "complaint",
            Intent::UnpromptedReply => "unprompted_reply",
        }
    }

    /// Parses an intent's name.
    pub fn parse(s: &str) -> Option<Intent> {
        ALL_INTENTS.into_iter().find(|i| i.as_str() == s)
    }
}

/// Every intent.
pub const ALL_INTENTS: [Intent; 5] = [Intent::SupportInquiry, Intent::OrderOrBooking, Intent::InformationRequest, Intent::Complaint, Intent::UnpromptedReply];

/// A language the rules have keywords in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    /// English.
    En,
    /// Spanish.
    Es,
    /// Portuguese.
    Pt,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentRule {
    name: Intent,
    human: bool,
    #[serde(default)]
    en: Vec<String>,
    #[serde(default)]
    es: Vec<String>,
    #[serde(default)]
    pt: Vec<String>,
}

/// When a queue rule applies with respect to business hours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hours {
    /// Always.
    #[default]
    Any,
    /// Only inside business hours.
    Inside,
    /// Only outside business hours.
    Outside,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Attribute {
    key: String,
    value: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueRule {
    name: String,
    #[serde(default)]
    intents: Vec<Intent>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    attribute: Option<Attribute>,
    #[serde(default)]
    hours: Hours,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BusinessHours {
    utc_offset_minutes: i64,
    days: Vec<u8>,
    open: String,
    close: String,
}

/// Escalation settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// The Slack workspace (`team_id`) escalations are posted through; empty: not posted.
    #[serde(default)]
    pub slack_account: String,
    /// The Slack channel id escalations are posted to.
    #[serde(default)]
    pub slack_channel: String,
    /// Seconds an awaiting-agent conversation may wait before it escalates.
    pub sla_secs: u64,
    /// Negative messages in a row that escalate.
    pub negative_streak: u32,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    human_request: Vec<String>,
    #[serde(default)]
    negative: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Language {
    #[serde(default)]
    en: Vec<String>,
    #[serde(default)]
    es: Vec<String>,
    #[serde(default)]
    pt: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    language: Language,
    default_intent: Intent,
    abandon_after_secs: u64,
    business_hours: BusinessHours,
    intent: Vec<IntentRule>,
    queue: Vec<QueueRule>,
    escalation: Escalation,
    acknowledgement: BTreeMap<String, String>,
}

/// Why a conversation escalates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    /// An escalation keyword (e.g. legal threats).
    Keyword,
    /// The customer asked for a person.
    HumanRequest,
    /// Negative messages in a row.
    Negative,
    /// Nobody answered within the SLA.
    Sla,
}

impl EscalationReason {
    /// The reason's name.
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationReason::Keyword => "keyword",
            EscalationReason::HumanRequest => "human_request",
            EscalationReason::Negative => "negative",
            EscalationReason::Sla => "sla",
        }
    }
}

/// The loaded rules, with keywords normalized.
#[derive(Clone, Debug)]
pub struct Rules {
    file: RulesFile,
    open_min: i64,
    close_min: i64,
}

/// What the rules say about one inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// The intent.
    pub intent: Intent,
    /// The language detected first, from its common words and keywords (English when nothing
    /// matched); the intent is then scored on that language's keywords only.
    pub lang: Lang,
    /// Whether the message is negative.
    pub negative: bool,
    /// The customer asked for a person: the conversation goes to a human and is acknowledged,
    /// whatever the intent.
    pub human_requested: bool,
    /// An escalation the message itself triggers.
    pub escalation: Option<EscalationReason>,
}

/// Lower case, accents folded, punctuation as spaces, padded with spaces: `" ola tudo bem "`.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(' ');
    let mut space = true;
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'á' | 'à' | 'â' | 'ã' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            '\'' | '’' => continue,
            c if c.is_alphanumeric() => c,
            _ => ' ',
        };
        if c == ' ' {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    if !space {
        out.push(' ');
    }
    out
}

fn hits(normalized: &str, words: &[String]) -> usize {
    words.iter().filter(|w| normalized.contains(w.as_str())).count()
}

fn prepare(words: &mut [String]) {
    for w in words {
        *w = normalize(w);
    }
}

fn minutes(hhmm: &str) -> Result<i64, String> {
    let (h, m) = hhmm.split_once(':').ok_or_else(|| format!("{hhmm:?} is not HH:MM"))?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| format!("{hhmm:?} is not HH:MM"))?, m.parse().map_err(|_| format!("{hhmm:?} is not HH:MM"))?);
    if !(0..=24).contains(&h) || !(0..60).contains(&m) {
        return Err(format!("{hhmm:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

impl Rules {
    /// Parses and checks rules.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let mut file: RulesFile = toml::from_str(text).map_err(|e| format!("routing rules: {e}"))?;
        for rule in &mut file.intent {
            prepare(&mut rule.en);
            prepare(&mut rule.es);
            prepare(&mut rule.pt);
        }
        prepare(&mut file.language.en);
        prepare(&mut file.language.es);
        prepare(&mut file.language.pt);
        prepare(&mut file.escalation.keywords);
        prepare(&mut file.escalation.human_request);
        prepare(&mut file.escalation.negative);
        for intent in ALL_INTENTS {
            if !file.intent.iter().any(|r| r.name == intent) {
                return Err(format!("routing rules: intent {} has no [[intent]] rule", intent.as_str()));
            }
        }
        if file.queue.is_empty() {
            return Err("routing rules: at least one [[queue]] is needed".into());
        }
        if file.business_hours.days.iter().any(|d| !(1..=7).contains(d)) {
            return Err("routing rules: business_hours.days are 1 (Monday) to 7 (Sunday)".into());
        }
        let open_min = minutes(&file.business_hours.open).map_err(|e| format!("routing rules: business_hours.open: {e}"))?;
        let close_min = minutes(&file.business_hours.close).map_err(|e| format!("routing rules: business_hours.close: {e}"))?;
        if file.escalation.slack_account.is_empty() != file.escalation.slack_channel.is_empty() {
            return Err("routing rules: escalation.slack_account and slack_channel go together".into());
        }
        Ok(Rules { file, open_min, close_min })
    }

    /// The embedded default rules.
    pub fn default_rules() -> Rules {
        Rules::parse(DEFAULT_RULES).expect("the embedded routing rules parse")
    }

    /// Escalation settings.
    pub fn escalation(&self) -> &Escalation {
        &self.file.escalation
    }

    /// Seconds of inactivity after which a conversation is abandoned.
    pub fn abandon_after_secs(&self) -> u64 {
        self.file.abandon_after_secs
    }

    /// Whether conversations with this intent go to a person.
    pub fn needs_human(&self, intent: Intent) -> bool {
        self.file.intent.iter().find(|r| r.name == intent).is_some_and(|r| r.human)
    }

    /// The acknowledgement in `lang` (English when the rules have none in it).
    pub fn acknowledgement(&self, lang: Lang) -> Option<&str> {
        let key = match lang {
            Lang::En => "en",
            Lang::Es => "es",
            Lang::Pt => "pt",
        };
        self.file.acknowledgement.get(key).or_else(|| self.file.acknowledgement.get("en")).map(String::as_str)
    }

    /// Which language `t` (normalized) is in: each language scores its common words, plus twice
    /// each of its intent and human-request keywords (a keyword says more than a common word).
    /// Ties prefer Portuguese over Spanish over English only when that language scored more.
    fn detect_language(&self, t: &str) -> (Lang, [usize; 3]) {
        let l = &self.file.language;
        let mut scores = [hits(t, &l.en), hits(t, &l.es), hits(t, &l.pt)];
        for rule in &self.file.intent {
            for (score, words) in scores.iter_mut().zip([&rule.en, &rule.es, &rule.pt]) {
                *score += 2 * hits(t, words);
            }
        }
        let lang = match scores {
            [en, es, pt] if pt > en && pt >= es => Lang::Pt,
            [en, es, _] if es > en => Lang::Es,
            _ => Lang::En,
        };
        (lang, scores)
    }

    /// Classifies a message. `replies_to_us`: it answers one of our own outbound messages.
    ///
    /// The language is detected first and the intent scored on that language's keywords alone,
    /// so a word two languages share ("pedido" is Spanish and Portuguese) counts once, not once
    /// per list. When the detected language has no keyword hit, every language's distinct
    /// keywords are tried, each counted once. Ties go to the earlier `[[intent]]` rule.
    pub fn assess(&self, text: &str, replies_to_us: bool) -> Assessment {
        let t = normalize(text);
        let (lang, _) = self.detect_language(&t);
        let index = match lang {
            Lang::En => 0,
            Lang::Es => 1,
            Lang::Pt => 2,
        };
        let score_in = |rule: &IntentRule, only: Option<usize>| -> usize {
            let lists = [&rule.en, &rule.es, &rule.pt];
            match only {
                Some(i) => hits(&t, lists[i]),
                None => {
                    let mut distinct: Vec<&String> = lists.iter().flat_map(|l| l.iter()).filter(|w| t.contains(w.as_str())).collect();
                    distinct.sort_unstable();
                    distinct.dedup();
                    distinct.len()
                }
            }
        };
        let best_of = |only: Option<usize>| {
            let mut best: Option<(usize, Intent)> = None;
            for rule in &self.file.intent {
                let n = score_in(rule, only);
                if n > 0 && best.is_none_or(|(b, _)| n > b) {
                    best = Some((n, rule.name));
                }
            }
            best
        };
        let best = best_of(Some(index)).or_else(|| best_of(None));
        let e = &self.file.escalation;
        let (human, keyword, negative) = (hits(&t, &e.human_request), hits(&t, &e.keywords), hits(&t, &e.negative));
        let intent = match best {
            Some((_, intent)) => intent,
            None if replies_to_us => Intent::UnpromptedReply,
            None => self.file.default_intent,
        };
        let escalation = if keyword > 0 {
            Some(EscalationReason::Keyword)
        } else if human > 0 {
            Some(EscalationReason::HumanRequest)
        } else {
            None
        };
        Assessment { intent, lang, negative: negative > 0, human_requested: human > 0, escalation }
    }

    /// Whether `at_ms` (unix ms) falls in business hours.
    pub fn in_business_hours(&self, at_ms: i64) -> bool {
        let local_min = at_ms.div_euclid(60_000) + self.file.business_hours.utc_offset_minutes;
        let day = local_min.div_euclid(24 * 60);
        let minute = local_min.rem_euclid(24 * 60);
        // 1970-01-01 was a Thursday (4).
        let weekday = (day + 3).rem_euclid(7) + 1;
        self.file.business_hours.days.contains(&(weekday as u8)) && minute >= self.open_min && minute < self.close_min
    }

    /// The queue for a conversation: the first queue rule matching its intent, channel, the
    /// customer's attributes and the time.
    pub fn queue(&self, intent: Intent, channel: &str, attributes: &BTreeMap<String, String>, at_ms: i64) -> String {
        let inside = self.in_business_hours(at_ms);
        self.file
            .queue
            .iter()
            .find(|q| {
                (q.intents.is_empty() || q.intents.contains(&intent))
                    && (q.channels.is_empty() || q.channels.iter().any(|c| c == channel))
                    && q.attribute.as_ref().is_none_or(|a| attributes.get(&a.key) == Some(&a.value))
                    && match q.hours {
                        Hours::Any => true,
                        Hours::Inside => inside,
                        Hours::Outside => !inside,
                    }
            })
            .map_or_else(|| self.file.queue.last().expect("checked non-empty").name.clone(), |q| q.name.clone())
    }

    /// Every queue name, in rule order.
    pub fn queues(&self) -> Vec<&str> {
        self.file.queue.iter().map(|q| q.name.as_str()).collect()
    }
}
