//! `ServiceRole` (STUB: to be completed with every field of the proto).
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ServiceRole",
    plural = "serviceroles",
    category = "istio-io",
    category = "rbac-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRoleSpec {}
