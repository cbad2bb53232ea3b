//! `ledgerd erase`: a DPO's client of `ledger.v1.Privacy` (erase, status, dead letters). It prints
//! ids, states and certificates, never personal data.

use anyhow::Context;
use clap::Args;
use proto::v1 as pb;

use super::when;
use super::fail;

/// Options of `ledgerd erase`.
#[derive(Args, Debug, Clone)]
pub struct EraseArgs {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The customer to erase (or, with --status, whose erasure to show).
    #[arg(long)]
    pub customer: Option<String>,
    /// Idempotency key of the request (or, with --status, the request to show).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Legal basis, e.g. gdpr-art17-1a.
    #[arg(long)]
    pub legal_basis: Option<String>,
    /// Who asks: a staff or system identifier.
    #[arg(long)]
    pub requested_by: Option<String>,
    /// Show an erasure's status instead of erasing.
    #[arg(long, conflicts_with = "retry_dead_letters")]
    pub status: bool,
    /// Queue every dead-lettered downstream notification again.
    #[arg(long)]
    pub retry_dead_letters: bool,
}

fn print_status(s: &pb::ErasureStatus) {
    println!("request:        {}", s.request_id);
    println!("customer:       {}", s.customer_id);
    println!("legal basis:    {}", s.legal_basis);
    println!("requested by:   {}", s.requested_by);
    println!("requested at:   {}", when(&s.requested_at));
    println!("unreadable at:  {}", when(&s.unreadable_at));
    println!("purged at:      {}", when(&s.purged_at));
    println!("key:            sha256:{}", s.key_fingerprint);
    for d in &s.deliveries {
        let state = pb::DeliveryState::try_from(d.state).map_or("unknown", |s| s.as_str_name());
        println!(
            "downstream {}: {} after {} attempt(s){}{}",
            d.downstream,
            state.trim_start_matches("DELIVERY_STATE_").to_lowercase(),
            d.attempts,
            if d.last_error.is_empty() { String::new() } else { format!(", last error: {}", d.last_error) },
            d.delivered_at.as_ref().map_or_else(String::new, |_| format!(", acknowledged {}", when(&d.delivered_at))),
        );
    }
}

/// Runs `ledgerd erase`.
pub async fn erase(args: EraseArgs) -> anyhow::Result<()> {
    let mut privacy = pb::privacy_client::PrivacyClient::new(crate::cli::client::connect(&args.target).await?);
    if args.retry_dead_letters {
        let r = privacy.retry_dead_letters(pb::RetryDeadLettersRequest {}).await.map_err(fail)?.into_inner();
        println!("queued {} dead-lettered notification(s) again", r.requeued);
        return Ok(());
    }
    if args.status {
        let req = pb::GetErasureStatusRequest {
            request_id: args.request_id.unwrap_or_default(),
            customer_id: args.customer.unwrap_or_default(),
        };
        let s = privacy.get_erasure_status(req).await.map_err(fail)?.into_inner().status.context("no status")?;
        print_status(&s);
        println!("\n{}", s.certificate);
        return Ok(());
    }
    let req = pb::EraseCustomerRequest {
        customer_id: args.customer.context("--customer is required")?,
        request_id: args.request_id.context("--request-id is required")?,
        legal_basis: args.legal_basis.context("--legal-basis is required")?,
        requested_by: args.requested_by.context("--requested-by is required")?,
    };
    let r = privacy.erase_customer(req).await.map_err(fail)?.into_inner();
    if let Some(s) = &r.status {
        print_status(s);
    }
    println!("\n{}", r.certificate);
    Ok(())
}
