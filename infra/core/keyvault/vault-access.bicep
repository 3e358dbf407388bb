metadata description = 'kvlink\'s footprint on one watched vault, deployed in the vault\'s resource group: least-privilege listing (access policy "list" on secrets, or Key Vault Reader on RBAC vaults) and a diagnostic setting streaming AuditEvent logs to kvlink\'s Event Hub.'

@description('Name of the existing vault (in this deployment\'s resource group).')
param vaultName string

@description('True when the vault uses Azure RBAC; false for the access-policy permission model.')
param rbac bool

@description('False when the identity already holds Key Vault Reader on the vault under another assignment: ARM refuses a second one for the same principal, role and scope (RoleAssignmentExists).')
param grantReader bool = true

@description('Object (principal) id of kvlink\'s managed identity.')
param principalId string
param tenantId string = subscription().tenantId

@description('The environment\'s resource token: it marks the role assignment kvlink made, so predown removes only that one.')
param resourceToken string

@description('Carries the environment (kvlink-<resource token>): one setting per environment watching this vault.')
param diagnosticSettingName string
@description('Namespace authorization rule that Azure Monitor streams with (Manage, Send, Listen).')
param eventHubAuthorizationRuleId string
param eventHubName string

// Key Vault Reader: "Read metadata of key vaults and its certificates, keys, and secrets. Cannot read
// sensitive values such as secret contents or key material." Listing secret properties is all kvlink does.
var keyVaultReaderRoleId = '21090545-7ca7-4776-b22c-e363652d74d2'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

// Access-policy vaults: "list" on secrets only. Never get (a value), never keys or certificates.
// 'add' merges this entry into the vault's policies; it never replaces or removes anyone else's.
resource listPolicy 'Microsoft.KeyVault/vaults/accessPolicies@2023-07-01' = if (!rbac) {
  parent: vault
  name: 'add'
  properties: {
    accessPolicies: [
      {
        tenantId: tenantId
        objectId: principalId
        permissions: {
          secrets: [
            'list'
          ]
          keys: []
          certificates: []
        }
      }
    ]
  }
}

// RBAC vaults: Key Vault Reader at the vault's scope, unless an equivalent grant is already there.
resource readerRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (rbac && grantReader) {
  name: guid(vault.id, principalId, keyVaultReaderRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'kvlink ${resourceToken}'
  }
}

// Deletes, disables and recoveries never reach Event Grid: on_vault_log reads them from the audit log.
resource auditToEventHub 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: diagnosticSettingName
  scope: vault
  properties: {
    eventHubAuthorizationRuleId: eventHubAuthorizationRuleId
    eventHubName: eventHubName
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

output vaultId string = vault.id
output location string = vault.location
