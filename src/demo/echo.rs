//! The demo's echo loop: HR and the identity system both own a person's display name and
//! keep rewriting it, until ekko's loop guard cuts the loop and later releases the result.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::standins::{Hr, Person, Queue};
use super::Producer;

/// The person whose display name the two systems fight over.
const PERSON: &str = "1004";

/// Notifications the two systems send before someone fixes their configuration.
const FLIPS: usize = 11;

/// Maximum wait for the release after the loop stops.
const RELEASE_WAIT: Duration = Duration::from_secs(6);

/// The echo scenario's stand-ins and ekko's admin listener.
pub struct Echo<'a> {
    /// HR's register.
    pub hr: &'a Hr,
    /// The stand-in broker.
    pub queue: &'a Queue,
    /// `http://` address of ekko's admin listener.
    pub admin: String,
}

impl Echo<'_> {
    /// Runs the loop, waits for the release and returns the report.
    pub async fn run(&self, producer: &mut Producer) -> Result<String, String> {
        let mut out = format!(
            "\nEcho loop: HR writes displayName \"Ola Nordmann\", the identity system rewrites it as\n\
             \"OLA NORDMANN\", and each write notifies again (person {PERSON}; half_life shortened to\n\
             {} ms for the demo).\n\n{:>5}  {:<6} {:<14} {}\n",
            super::DEMO_HALF_LIFE.as_millis(),
            "flip",
            "writer",
            "displayName",
            "ekko"
        );
        let queued_before = self.queue.len();
        let mut cut_at = None;
        for flip in 1..=FLIPS {
            let (writer, display_name) = if flip % 2 == 1 {
                ("hr", "Ola Nordmann")
            } else {
                ("iga", "OLA NORDMANN")
            };
            self.hr.save(&Person {
                id: PERSON,
                given: "Ola",
                family: "Nordmann",
                email: None,
                display_name: Some(display_name),
            });
            let decision = producer.notify(PERSON, writer, None).await?;
            if cut_at.is_none() && decision.starts_with("held") {
                cut_at = Some(flip);
            }
            out.push_str(&format!(
                "{flip:>5}  {writer:<6} {display_name:<14} {decision}\n"
            ));
        }
        let cut_at = cut_at.ok_or("the loop guard did not cut the echo loop")?;

        let quarantine = self
            .quarantine(producer)
            .await?
            .ok_or("the looping person is not listed as quarantined")?;
        let sources: Vec<&str> = quarantine["sources"]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "\nCut at flip {cut_at}: ekko quarantined hr/person/{PERSON} ({}), sources {}, {} notifications held.\n",
            quarantine["reason"].as_str().unwrap_or("?"),
            sources.join(" and "),
            quarantine["held"]
        ));

        let started = Instant::now();
        while self.quarantine(producer).await?.is_some() {
            if started.elapsed() > RELEASE_WAIT {
                return Err("the quarantine was not released in time".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let released: Vec<_> = self
            .queue
            .since(queued_before)
            .into_iter()
            .filter(|(person, coalesced)| person == PERSON && coalesced.is_some())
            .collect();
        let [(_, Some(coalesced))] = released.as_slice() else {
            return Err(format!(
                "expected one released notification, the queue got {}",
                released.len()
            ));
        };
        out.push_str(&format!(
            "Released after {:.1} s: the final state (\"Ola Nordmann\", written by hr) reached the queue once,\n\
             with Ekko-Coalesced: {coalesced}.\n",
            started.elapsed().as_secs_f64()
        ));
        Ok(out)
    }

    /// The person's entry in `GET /admin/quarantine`, if it is quarantined.
    async fn quarantine(&self, producer: &Producer) -> Result<Option<Value>, String> {
        let request = Request::get(format!("{}/admin/quarantine", self.admin))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = producer
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let list: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("admin API answered non-JSON: {e}"))?;
        let entity = format!("hr/person/{PERSON}");
        Ok(list["quarantined"]
            .as_array()
            .and_then(|entries| entries.iter().find(|e| e["entity"] == entity.as_str()))
            .cloned())
    }
}
