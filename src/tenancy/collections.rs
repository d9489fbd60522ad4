//! The fixed set of collections and their indexes, for the platform and for every tenant.

use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

pub struct CollectionSpec {
    pub name: &'static str,
    pub indexes: &'static [IndexSpec],
}

/// Indexes earlier versions created and nothing uses any more, by collection: provisioning drops
/// them, as every write would keep paying for them.
const RETIRED_INDEXES: &[(&str, &str)] = &[
    // Search terms moved from each message to blocks of messages (`search_blocks`).
    ("messages", "terms_1_conversation_id_1_seq_-1"),
    // Held every message; its successor `replies_1` holds replies only.
    ("messages", "conversation_id_1_reply_to_1_seq_1"),
    // A message's `_id` is its idempotency key now (`message_keys`). Provisioning re-keys the
    // messages stored before first, as this index is what keeps their repeats out until then.
    ("messages", crate::tenancy::repos::LEGACY_CLIENT_ID_INDEX),
];

pub struct IndexSpec {
    pub name: &'static str,
    pub keys: &'static [(&'static str, i32)],
    pub unique: bool,
    /// A partial index: only documents whose this field is above zero are in it, so writes of
    /// the others do not pay for it. Queries must constrain the field to a positive value.
    pub only_where_positive: Option<&'static str>,
}

const fn index(name: &'static str, keys: &'static [(&'static str, i32)]) -> IndexSpec {
    IndexSpec { name, keys, unique: false, only_where_positive: None }
}

const fn unique(name: &'static str, keys: &'static [(&'static str, i32)]) -> IndexSpec {
    IndexSpec { name, keys, unique: true, only_where_positive: None }
}

pub const PLATFORM_COLLECTIONS: &[CollectionSpec] = &[
    CollectionSpec { name: "tenants", indexes: &[] },
    CollectionSpec { name: "api_keys", indexes: &[index("tenant_id_1__id_1", &[("tenant_id", 1), ("_id", 1)])] },
    CollectionSpec { name: "audit_log", indexes: &[unique("tenant_id_1_seq_1", &[("tenant_id", 1), ("seq", 1)])] },
    CollectionSpec { name: "audit_heads", indexes: &[] },
    CollectionSpec { name: "usage", indexes: &[] },
];

pub const TENANT_COLLECTIONS: &[CollectionSpec] = &[
    CollectionSpec { name: "users", indexes: &[index("name_key_1__id_1", &[("name_key", 1), ("_id", 1)])] },
    CollectionSpec {
        name: "relationships",
        indexes: &[index("user_id_1_kind_1_other_id_1", &[("user_id", 1), ("kind", 1), ("other_id", 1)])],
    },
    CollectionSpec {
        name: "devices",
        indexes: &[unique("user_id_1_device_id_1", &[("user_id", 1), ("device_id", 1)])],
    },
    CollectionSpec {
        name: "conversations",
        indexes: &[
            unique("unique_key_1", &[("unique_key", 1)]),
            index("last_activity_at_-1__id_-1", &[("last_activity_at", -1), ("_id", -1)]),
        ],
    },
    CollectionSpec {
        name: "members",
        indexes: &[
            unique("conversation_id_1_user_id_1", &[("conversation_id", 1), ("user_id", 1)]),
            index("user_id_1_conversation_id_1", &[("user_id", 1), ("conversation_id", 1)]),
        ],
    },
    CollectionSpec {
        name: "messages",
        indexes: &[
            unique("conversation_id_1_seq_1", &[("conversation_id", 1), ("seq", 1)]),
            // Replies only (`reply_to` is a seq, from 1): most messages are not, and skip it.
            IndexSpec {
                name: "replies_1",
                keys: &[("conversation_id", 1), ("reply_to", 1), ("seq", 1)],
                unique: false,
                only_where_positive: Some("reply_to"),
            },
        ],
    },
    CollectionSpec {
        name: "search_blocks",
        indexes: &[
            index("terms_1_conversation_id_1", &[("terms", 1), ("conversation_id", 1)]),
            index("conversation_id_1_to_seq_1", &[("conversation_id", 1), ("to_seq", 1)]),
        ],
    },
    CollectionSpec {
        name: "reactions",
        indexes: &[
            unique(
                "conversation_id_1_seq_1_emoji_1_user_id_1",
                &[("conversation_id", 1), ("seq", 1), ("emoji", 1), ("user_id", 1)],
            ),
            index("conversation_id_1_user_id_1_seq_1", &[("conversation_id", 1), ("user_id", 1), ("seq", 1)]),
        ],
    },
    CollectionSpec {
        name: "files",
        indexes: &[index("uploader_id_1_created_at_-1", &[("uploader_id", 1), ("created_at", -1)])],
    },
    CollectionSpec { name: "code_sessions", indexes: &[index("visibility_1__id_1", &[("visibility", 1), ("_id", 1)])] },
    CollectionSpec {
        name: "session_members",
        indexes: &[index("user_id_1_session_id_1", &[("user_id", 1), ("session_id", 1)])],
    },
    CollectionSpec {
        name: "workspace_items",
        indexes: &[unique("session_id_1_parent_id_1_name_1", &[("session_id", 1), ("parent_id", 1), ("name", 1)])],
    },
    CollectionSpec { name: "collab_updates", indexes: &[unique("doc_id_1_seq_1", &[("doc_id", 1), ("seq", 1)])] },
    CollectionSpec {
        name: "collab_snapshots",
        indexes: &[index("doc_id_1_epoch_1_upto_seq_-1", &[("doc_id", 1), ("epoch", 1), ("upto_seq", -1)])],
    },
    CollectionSpec { name: "collab_counters", indexes: &[] },
    CollectionSpec { name: "events", indexes: &[index("topic_1_seq_1", &[("topic", 1), ("seq", 1)])] },
    CollectionSpec { name: "analytics_daily", indexes: &[unique("day_1_metric_1", &[("day", 1), ("metric", 1)])] },
];

/// Creates each collection (if missing) and its indexes. Safe to run again.
pub async fn ensure(db: &Database, specs: &[CollectionSpec]) -> Result<(), mongodb::error::Error> {
    let existing = db.list_collection_names().await?;
    for spec in specs {
        // Another node may create it in the meantime: NamespaceExists (48) is fine.
        if !existing.iter().any(|name| name == spec.name)
            && let Err(e) = db.create_collection(spec.name).await
            && !matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == 48)
        {
            return Err(e);
        }
        for (_, retired) in RETIRED_INDEXES.iter().filter(|(collection, _)| *collection == spec.name) {
            // IndexNotFound (27): already gone, or never made.
            if let Err(e) = db.collection::<Document>(spec.name).drop_index(*retired).await
                && !matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == 27)
            {
                return Err(e);
            }
        }
        if spec.indexes.is_empty() {
            continue;
        }
        let models = spec.indexes.iter().map(|ix| {
            let keys: Document = ix.keys.iter().map(|(field, dir)| (field.to_string(), (*dir).into())).collect();
            let partial = ix.only_where_positive.map(|field| doc! { field: { "$gt": 0 } });
            let options = IndexOptions::builder()
                .name(ix.name.to_string())
                .unique(ix.unique.then_some(true))
                .partial_filter_expression(partial)
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        });
        db.collection::<Document>(spec.name).create_indexes(models).await?;
    }
    Ok(())
}
