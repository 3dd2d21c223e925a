//! The `email` channel: one mail per alert to the channel's target address,
//! with a text part and an HTML part, over SMTP with STARTTLS required (never
//! plain text: credentials and alerts stay encrypted). The server, port, sender
//! and user name are flags (`--smtp-*`); the password is the channel's secret.
//! `--smtp-ca-file` adds a root certificate (a private or test server's).
//!
//! The alert id is in the `Message-ID` (`<alert_id@conscope>`, characters a
//! Message-ID cannot hold replaced by `_`), so a mail re-sent after a crash can
//! be recognised: a Message-ID is SMTP's idempotency key.
//!
//! Touches: the SMTP server.

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport};

use super::{shorten, Outcome};
use crate::notify::message::{escape_html, Message};

/// The SMTP server the email channels use.
#[derive(Debug, Clone, Default)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub from: String,
    pub username: Option<String>,
    /// PEM of an extra trusted root certificate.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// The HTML part: the title as a heading, the lines, the dashboard link.
fn html(message: &Message) -> String {
    let mut html = format!(
        "<!doctype html><html><body><h2>{}</h2>",
        escape_html(&message.title)
    );
    for line in &message.lines {
        html.push_str(&format!("<p>{}</p>", escape_html(line)));
    }
    if let Some(link) = &message.link {
        html.push_str(&format!(
            "<p><a href=\"{}\">Open on the dashboard</a></p>",
            escape_html(link)
        ));
    }
    html.push_str("</body></html>");
    html
}

fn message_id_part(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn send(smtp: &SmtpSettings, to: &str, message: &Message, key: &str, password: Option<&str>) -> Outcome {
    let parsed = (|| -> Result<lettre::Message, String> {
        let from: Mailbox = smtp.from.parse().map_err(|e| format!("--smtp-from: {e}"))?;
        let to: Mailbox = to.parse().map_err(|e| format!("target address: {e}"))?;
        lettre::Message::builder()
            .from(from)
            .to(to)
            .subject(message.title.clone())
            .message_id(Some(format!("<{}@conscope>", message_id_part(key))))
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(message.text()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(html(message)),
                    ),
            )
            .map_err(|e| format!("cannot build the mail: {e}"))
    })();
    let mail = match parsed {
        Ok(mail) => mail,
        Err(reason) => return Outcome::Definite(reason),
    };
    let transport = match transport(smtp, password) {
        Ok(transport) => transport,
        Err(reason) => return Outcome::Definite(reason),
    };
    match transport.send(&mail) {
        Ok(response) => Outcome::Accepted(shorten(&format!(
            "SMTP {} {}",
            response.code(),
            response.message().collect::<Vec<_>>().join(" ")
        ))),
        Err(error) if error.is_permanent() => Outcome::Definite(shorten(&format!("SMTP {error}"))),
        Err(error) => Outcome::Transient {
            reason: shorten(&format!("SMTP {error}")),
            retry_after: None,
        },
    }
}

fn transport(smtp: &SmtpSettings, password: Option<&str>) -> Result<SmtpTransport, String> {
    if smtp.host.is_empty() {
        return Err("no SMTP server: set --smtp-host".to_owned());
    }
    let mut tls = TlsParameters::builder(smtp.host.clone());
    if let Some(pem) = &smtp.ca_pem {
        let certificate = Certificate::from_pem(pem).map_err(|e| format!("--smtp-ca-file: {e}"))?;
        tls = tls.add_root_certificate(certificate);
    }
    let tls = tls.build().map_err(|e| format!("TLS settings: {e}"))?;
    let mut builder = SmtpTransport::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .tls(Tls::Required(tls))
        .hello_name(ClientId::Domain("conscope".to_owned()))
        .timeout(Some(smtp.timeout));
    if let (Some(user), Some(password)) = (&smtp.username, password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.to_owned()));
    }
    Ok(builder.build())
}
