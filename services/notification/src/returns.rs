//! The return saga's emails: the instructions, the expiry (the instructions' compensation) and
//! the refund confirmation. Each is one email to the address in the saga's input, delivered
//! through [`Send::deliver`], so it goes out at most once per idempotency key like the order
//! confirmation.

use async_trait::async_trait;
use orderflow_activities::{Activity, ActivityError, TaskContext};
use orderflow_workflows::{
    order::contracts::Notification,
    returns::contracts::{
        NOTIFICATION_RETURN_EXPIRED, NOTIFICATION_RETURN_INSTRUCTIONS,
        NOTIFICATION_RETURN_REFUNDED, ReturnSagaInput,
    },
};

use crate::{
    model::Channel,
    send::{Outcome, Outgoing, Send, codes, db_error},
    templates::{self, ReturnMessage},
};

/// Sends `message` for `input` by email.
async fn send_one(
    send: &Send,
    ctx: &TaskContext,
    input: &ReturnSagaInput,
    message: ReturnMessage,
) -> Result<Notification, ActivityError> {
    let rendered = templates::return_message(message, input)
        .map_err(|e| ActivityError::permanent(codes::TEMPLATE, e.to_string()))?;
    let out = Outgoing {
        channel: Channel::Email,
        recipient: input.email.clone(),
        rendered: &rendered,
    };
    match send.deliver(ctx, &out).await.map_err(db_error)? {
        Outcome::Sent(id) => Ok(Notification {
            notification_id: id.to_string(),
        }),
        Outcome::Failed(_, why) => Err(ActivityError::permanent(codes::UNDELIVERABLE, why)),
        Outcome::Delayed(why) => Err(ActivityError::retryable(codes::DELIVERY_DELAYED, why)),
    }
}

macro_rules! return_email {
    ($(#[$doc:meta])* $ty:ident, $name:expr, $message:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $ty(pub Send);

        #[async_trait]
        impl Activity for $ty {
            const NAME: &'static str = $name;
            type Input = ReturnSagaInput;
            type Output = Notification;

            async fn run(
                &self,
                ctx: &TaskContext,
                input: ReturnSagaInput,
            ) -> Result<Notification, ActivityError> {
                send_one(&self.0, ctx, &input, $message).await
            }
        }
    };
}

return_email!(
    /// `notification.return_instructions`: how and by when to send the parcel back.
    Instructions,
    NOTIFICATION_RETURN_INSTRUCTIONS,
    ReturnMessage::Instructions
);
return_email!(
    /// `notification.return_expired`: no parcel arrived in time; the order stands.
    Expired,
    NOTIFICATION_RETURN_EXPIRED,
    ReturnMessage::Expired
);
return_email!(
    /// `notification.return_refunded`: the parcel is in and the money is on its way back.
    Refunded,
    NOTIFICATION_RETURN_REFUNDED,
    ReturnMessage::Refunded
);
